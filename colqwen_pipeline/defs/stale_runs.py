"""Runs whose process died keep what they held. A `colqwen-pipeline ingest` killed by SIGKILL, OOM or
a lost machine stays STARTED forever and counts against the run queue's limit; a run whose step
process died is marked failed by its run worker but keeps its ``gpu`` pool slot, so every later
GPU step waits for good. The CLI and the inbox sensor clear both before they launch anything (the
daemon's run monitoring frees finished runs' slots too: dagster.yaml ``free_slots_after_run_end_seconds``;
this covers the CLI and the UI when no daemon runs)."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable

import dagster as dg

HOST_TAG, PID_TAG = "colqwen/host", "colqwen/pid"
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fail_dead_cli_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark this host's in-progress CLI runs whose process is gone as failed; returns their run ids."""
    host = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: host}))
    dead = [run for run in runs if run.tags.get(PID_TAG, "").isdigit() and not _alive(int(run.tags[PID_TAG]))]
    for run in dead:
        message = f"the process of this run (pid {run.tags[PID_TAG]} on {host}) is gone: marked failed"
        instance.report_run_failed(run, message)
    return [run.run_id for run in dead]


def free_slots_of_finished_runs(instance: dg.DagsterInstance) -> list[str]:
    """Give back the pool slots that runs which have ended (in any way, under any launcher) still
    claim; returns those runs' ids."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return []
    runs = instance.get_runs(filters=dg.RunsFilter(run_ids=list(holders)))
    live = {run.run_id for run in runs if not run.is_finished}
    ended = sorted(holders - live)  # finished, or deleted
    for run_id in ended:
        storage.free_concurrency_slots_for_run(run_id)
    return ended


def clear_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Both of the above, as the CLI and the sensor call them: one line per run for the log."""
    lines = [
        f"marked run {run} failed: its `colqwen-pipeline ingest` process is gone"
        for run in fail_dead_cli_runs(instance)
    ]
    lines += [f"gave back the pool slot of ended run {run_id}" for run_id in free_slots_of_finished_runs(instance)]
    return lines


def wait_for_pool(instance: dg.DagsterInstance, pool: str, echo: Callable[[str], None], poll_s: float = 1.0) -> None:
    """Before a run: wait while live runs hold every slot of ``pool``, saying who, and giving back
    the slots of runs that end meanwhile. Dagster's own wait inside a step says only "blocked" and
    does not answer SIGTERM; this one is a plain sleep, so a signal stops the ingest at once."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    said_at = -math.inf
    while True:
        info = storage.get_concurrency_info(pool)
        limit = info.limit if info.limit is not None else info.slot_count
        if not limit or len(info.claimed_slots) < limit or free_slots_of_finished_runs(instance):
            return
        if time.monotonic() - said_at >= 30:
            holders = ", ".join(sorted(info.active_run_ids))
            echo(f"waiting for the {pool!r} pool ({limit} slot(s)): held by run(s) {holders}")
            said_at = time.monotonic()
        time.sleep(poll_s)
