"""The real UI: `dagster dev` with the daemon, a file dropped into the inbox, a partition launched
through GraphQL, a deletion, and the asset graph loaded in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import REPO, SAMPLES, free_port

pytestmark = pytest.mark.slow
LOCATION = "colqwen_pipeline.definitions"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class DagsterDev:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]

    def runs(self) -> list[dict]:
        query = "{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }"
        return self.graphql(query)["runsOrError"]["results"]

    def wait_for_run(self, predicate, timeout_s: float = 240) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = [r for r in self.runs() if predicate(r) and r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]
            if done:
                return done[0]
            time.sleep(2)
        raise AssertionError(f"no finished run matched within {timeout_s} s: {self.runs()}")

    def launch_partition(self, job: str, partition: str) -> str:
        mutation = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        result = self.graphql(mutation, {"p": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]


@pytest.fixture
def dagster_dev(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    home, inbox = tmp_path / "dagster_home", tmp_path / "inbox"
    home.mkdir()
    inbox.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "COLQWEN_HOME": str(tmp_path / "var"),
        "COLQWEN_INBOX": str(inbox),
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_SENSOR_INTERVAL_S": "2",
        "COLQWEN_SETTLE_S": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    dagster = REPO / ".venv" / "bin" / "dagster"
    log = (tmp_path / "dagster-dev.log").open("w")
    process = subprocess.Popen(
        [str(dagster) if dagster.exists() else "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=os.environ | env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = DagsterDev(port)
    deadline = time.monotonic() + 180
    while True:
        try:
            server.graphql("{ version }")
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "dagster-dev.log").read_text()
            time.sleep(1)
    yield server, inbox, Settings()
    os.killpg(process.pid, signal.SIGINT)  # dagster dev ignores SIGTERM for a while
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_inbox_sensor_ui_launch_and_deletion_in_a_running_dagster_dev(dagster_dev, tmp_path):
    from colqwen_pipeline import stages

    server, inbox, settings = dagster_dev
    shutil.copy(SAMPLES / "scanned_invoice.jpg", inbox / "invoice.jpg")
    key = document_key("invoice.jpg")

    # 1. dropped into the inbox -> indexed without a click
    run = server.wait_for_run(lambda r: r["jobName"] == "ingest_document")
    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/sensor_name", "value": "inbox_sensor"} in run["tags"]
    assert [h.doc_id for h in stages.search("invoice total", top_k=1, settings=settings)] == [key]

    # 2. a partition launched through the GraphQL API (what the UI's Materialize button does)
    run_id = server.launch_partition("ingest_document", key)
    assert server.wait_for_run(lambda r: r["runId"] == run_id)["status"] == "SUCCESS"
    assert stages.make_index(settings).count_rows(key) > 0

    # 3. deleted from the inbox -> removed from search
    (inbox / "invoice.jpg").unlink()
    assert server.wait_for_run(lambda r: r["jobName"] == "remove_documents_job")["status"] == "SUCCESS"
    assert stages.search("invoice total", top_k=1, settings=settings) == []

    # 4. the asset graph, as a person sees it
    page = f"{server.url}/locations/{LOCATION}/asset-groups/colqwen"
    dom = chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", page)
    for asset in ("raw_documents", "page_images", "page_embeddings", "milvus_collection"):
        assert asset in dom
    assert "Asset checks" in dom and "Partitions" in dom
    chromium(tmp_path, "--virtual-time-budget=20000", "--window-size=1600,1000", f"--screenshot={tmp_path}/graph.png", page)
    assert (tmp_path / "graph.png").stat().st_size > 10_000


def chromium(tmp_path: Path, *arguments: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
