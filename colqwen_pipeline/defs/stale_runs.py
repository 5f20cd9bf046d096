"""Runs of `colqwen-pipeline ingest` whose process died (SIGKILL, OOM, a lost machine) stay
STARTED forever and count against the run queue's limit. Each CLI run carries its host and pid;
the CLI and the inbox sensor mark such runs of this host failed when the pid is gone, and free
the concurrency-pool slots they held."""

from __future__ import annotations

import os
import socket

import dagster as dg

HOST_TAG, PID_TAG = "colqwen/host", "colqwen/pid"
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


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
        # and give back its "gpu" pool slot: a dead run's claim would queue every later run forever
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in dead]
