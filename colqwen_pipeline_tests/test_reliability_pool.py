"""A dead run's ``gpu`` pool slot (issue 26 item 3), with real `colqwen-pipeline ingest` processes.

A run whose process died and that its run worker marked FAILURE (what a daemon run whose step
process got kill -9 looks like) kept its slot for good: every later GPU step waited, and a CLI
ingest busy-waited inside Dagster for over 12 minutes, deaf to SIGTERM. Now an ingest that finds
the pool full waits in a plain, interruptible sleep naming the holder, and gives back the slots
of ended runs, whoever launched them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pypdfium2 as pdfium
import pytest

from colqwen_pipeline.defs.instance import opening_instance
from colqwen_pipeline_tests.conftest import SAMPLES

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "colqwen_pipeline.cli", "ingest"]


def long_pdf(path: Path, pages: int) -> None:
    """A PDF of ``pages`` copies of a sample page: long enough to hold the pool for a while."""
    source = pdfium.PdfDocument(SAMPLES / "pump_maintenance_manual.pdf")
    document = pdfium.PdfDocument.new()
    document.import_pages(source, [0] * pages)
    document.save(path)


def wait(condition, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def pool_holders(instance: dg.DagsterInstance) -> set[str]:
    return instance.event_log_storage.get_concurrency_info("gpu").active_run_ids


def test_a_dead_runs_slot_is_given_back_and_a_waiting_ingest_answers_sigterm(state, tmp_path):
    env = os.environ | {"COLQWEN_RENDER_WORKERS": "1"}
    long_pdf(state.inbox / "long.pdf", 40)
    instance = None
    holder = subprocess.Popen(
        [*CLI, str(state.inbox / "long.pdf")],
        env=env | {"COLQWEN_DPI": "500"},  # ~6x the pixels: it must still hold the slot when it is killed
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait(lambda: (state.dagster_home / "dagster.yaml").exists(), "the CLI's Dagster home")
        with opening_instance(state.dagster_home):  # the CLI may be creating its storage at this moment
            instance = dg.DagsterInstance.from_config(str(state.dagster_home))
        wait(lambda: pool_holders(instance), "the first ingest to take the gpu slot")
        (held,) = pool_holders(instance)
        (state.inbox / "invoice.jpg").write_bytes((SAMPLES / "scanned_invoice.jpg").read_bytes())

        waiting = subprocess.Popen(CLI, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        wait(
            lambda: lines.append(waiting.stdout.readline()) or "waiting for the 'gpu' pool" in lines[-1],
            "the second ingest to wait for the pool",
        )
        assert held in lines[-1]  # it names the run that holds the slot
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=20) == 128 + signal.SIGTERM

        assert holder.poll() is None, "the holder ended before it could be killed: make long.pdf longer"
        os.killpg(holder.pid, signal.SIGKILL)  # the holder dies with the slot claimed...
        holder.wait(timeout=30)
        run = instance.get_run_by_id(held)
        instance.report_run_failed(run, "its step process died")  # ...and its run worker marks it failed
        assert pool_holders(instance) == {held}

        after = subprocess.run(CLI, env=env, capture_output=True, text=True, timeout=600)

        assert after.returncode == 0, after.stdout + after.stderr
        assert f"gave back the pool slot of ended run {held}" in after.stdout
        assert "done: 2 documents" in after.stdout
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        if instance is not None:
            instance.dispose()
