"""`colqwen-pipeline ingest` as a real subprocess: SIGTERM and Ctrl-C stop it at once with one line
and leave nothing half-written; a SIGKILLed ingest does not hold the run queue forever."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.index.connection import TurnQueue

pytestmark = pytest.mark.slow


def scans(inbox: Path, count: int) -> None:
    for i in range(count):
        image = Image.new("RGB", (500, 700), "white")
        image.paste((i * 5 % 256, 40, 90), (20, 20 + i, 120, 120 + i))
        image.save(inbox / f"scan-{i:03d}.png")


def start_ingest(state) -> subprocess.Popen:
    env = os.environ | {"COLQWEN_MAX_DOCUMENTS_PER_RUN": "20", "COLQWEN_EMBED_WAVE_PAGES": "4"}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "colqwen_pipeline.cli", "ingest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def instance_of(state) -> dg.DagsterInstance:
    from colqwen_pipeline.defs.instance import opening_instance

    with opening_instance(state.dagster_home):  # the CLI may be creating its storage at this moment
        return dg.DagsterInstance.from_config(str(state.dagster_home))


def wait_until_documents_are_indexed(state, process: subprocess.Popen, at_least: int) -> None:
    deadline = time.monotonic() + 240
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the ingest never got going"
        try:
            if len(stages.make_index(state).document_ids()) >= at_least:
                return
        except Exception:  # noqa: BLE001 - the ingest holds the Lite file for a moment
            pass
        time.sleep(0.5)


@contextlib.contextmanager
def holding_the_index(state) -> Iterator[None]:
    """Take the Milvus Lite file's turn, as every process does before it opens the file, and keep
    it: the ingest writes nothing more until it is given back, so it cannot finish meanwhile (this
    process's own index calls would wait behind it too)."""
    queue = TurnQueue((state.home_dir / "milvus.db").resolve())
    ticket = queue.enter()
    try:
        queue.wait_turn(ticket, time.monotonic() + 120)  # the ingest hands the file over between writes
        yield
    finally:
        queue.leave(ticket)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_ingest_at_once_with_one_line_and_a_consistent_index(state, signo, monkeypatch):
    scans(state.inbox, 60)
    process = start_ingest(state)
    wait_until_documents_are_indexed(state, process, at_least=4)

    with holding_the_index(state):  # no race with the end of the ingest: it writes nothing until it has stopped
        # To the ingest process only: a terminal's Ctrl-C also reaches Dagster's compute-log helper
        # (watch_orphans.py), which prints a traceback of its own (noted in docs/troubleshooting).
        process.send_signal(signo)
        _, stderr = process.communicate(timeout=60)

    assert process.returncode == 128 + signo
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"stopped by {signal.Signals(signo).name}: ")
    instance = instance_of(state)
    statuses = {run.status for run in instance.get_runs()}
    assert dg.DagsterRunStatus.STARTED not in statuses and dg.DagsterRunStatus.FAILURE in statuses
    indexed = len(stages.make_index(state).document_ids())
    assert 4 <= indexed < 60  # stopped early: not every run went on
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    summary = ingest(state, instance=instance, echo=lambda _: None)  # picks up where it stopped
    assert summary.failed == {} and summary.documents == 60
    assert summary.checks["collection_consistency"] == "passed"


def test_a_killed_ingests_run_is_marked_failed_by_the_next_ingest(state, monkeypatch):
    scans(state.inbox, 30)
    process = start_ingest(state)
    wait_until_documents_are_indexed(state, process, at_least=2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    instance = instance_of(state)
    (stuck,) = [run for run in instance.get_runs() if run.status == dg.DagsterRunStatus.STARTED]
    messages: list[str] = []

    summary = ingest(state, instance=instance, echo=messages.append)  # would wait forever on the dead run's pool slot

    assert summary.failed == {} and summary.documents == 30
    assert instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.FAILURE
    assert any(stuck.run_id in m and "process is gone" in m for m in messages)
    in_progress = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert in_progress == []
