"""The production topology of deploy/compose.yaml, rehearsed without Docker on loopback ports:
Milvus server, Redis with a password, Postgres-backed Dagster (webserver + daemon), the model
server, each with the environment compose gives it (API keys on, the inbox as its container sees it);
the daemon's sensor indexes dropped files and the model server's /search finds them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from colqwen_pipeline_tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_production_rehearsal_indexes_dropped_files_and_searches_them_over_http():
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "rehearse_production.py"), "--timeout", "540"],
        capture_output=True,
        text=True,
        timeout=660,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and summary["ok"], f"{summary.get('error')}\n{run.stderr[-3000:]}"
    assert summary["documents"] == 4 and len(summary["indexed"]) == 4
    assert 1 <= summary["ingest_runs"] <= 2  # four files dropped at once: one run, two if a tick splits them
    assert summary["top_hit"] is not None
    assert summary["listed_by_the_model_server"] == summary["indexed"]  # it sees the inbox the daemon reads
    assert summary["api_keys"].startswith("on")
