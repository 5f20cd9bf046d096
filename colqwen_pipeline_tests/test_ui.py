"""The real UI: `dagster dev` with the daemon, a file dropped into the inbox, a partition launched
through GraphQL, the asset graph and page thumbnails in headless Chromium, and a deletion."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import REPO, SAMPLES, free_port
from colqwen_pipeline_tests.dagster_processes import LOCATION, GraphQL, program, started, wait_until_served

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class DagsterDev(GraphQL):
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
    command = [program("dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    log = tmp_path / "dagster-dev.log"
    with started(command, log) as process:
        server = DagsterDev(port)
        wait_until_served(server, process, log)
        yield server, inbox, Settings()


def test_inbox_sensor_ui_launch_and_deletion_in_a_running_dagster_dev(dagster_dev, tmp_path):
    from colqwen_pipeline.bulk import stages

    server, inbox, settings = dagster_dev
    shutil.copy(SAMPLES / "scanned_invoice.jpg", inbox / "invoice.jpg")
    key = document_key("invoice.jpg")

    # 1. dropped into the inbox -> indexed without a click
    run = server.wait_for_run(lambda r: r["jobName"] == "ingest_job")
    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/sensor_name", "value": "inbox_sensor"} in run["tags"]
    assert {"key": "colqwen/trigger", "value": "sensor"} in run["tags"]
    assert [h.doc_id for h in stages.search("invoice total", top_k=1, settings=settings)] == [key]

    # 2. a partition launched through the GraphQL API (what the UI's Materialize button does)
    run_id = server.launch_partition("ingest_job", key)
    launched = server.wait_for_run(lambda r: r["runId"] == run_id)
    assert launched["status"] == "SUCCESS"
    assert {"key": "colqwen/trigger", "value": "ui"} in launched["tags"]
    assert stages.make_index(settings).count_tokens(key) > 0

    # 3. what a person sees: the asset graph with its checks, and the page thumbnails
    with browser() as page:
        page.goto(f"{server.url}/locations/{LOCATION}/asset-groups/colqwen")
        page.get_by_text("milvus_collection").first.wait_for(timeout=60_000)
        page.get_by_text("/ 3 Passed").first.wait_for(timeout=60_000)  # the three collection checks
        assert "Execution failed" not in page.inner_text("body")
        text = page.inner_text("body")
        for label in ("raw_documents", "page_images", "page_embeddings", "milvus_collection", "Asset checks"):
            assert label in text
        page.screenshot(path=str(tmp_path / "asset-graph.png"))
        page.goto(f"{server.url}/assets/page_images?partition={key}&view=partitions")
        page.get_by_text("Show Markdown").first.click()
        page.locator('img[src^="data:image/jpeg"]').first.wait_for(timeout=60_000)
        assert page.locator('img[src^="data:image/jpeg"]').count() == 1  # the invoice has one page

    # 4. deleted from the inbox -> removed from search
    (inbox / "invoice.jpg").unlink()
    assert server.wait_for_run(lambda r: r["jobName"] == "remove_documents_job")["status"] == "SUCCESS"
    assert stages.search("invoice total", top_k=1, settings=settings) == []


def test_a_drop_of_50_files_into_a_running_dagster_dev_is_searchable_in_few_runs(dagster_dev):
    """Issue target: 50 files dropped into the inbox of a running `dagster dev` are all searchable
    within 5 minutes, in at most 3 runs, each with at most one model load."""
    from PIL import Image, ImageDraw

    from colqwen_pipeline.bulk import stages
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact

    server, inbox, settings = dagster_dev
    staging = inbox.parent / "staging"
    staging.mkdir()
    for i in range(50):
        page = Image.new("RGB", (600, 800), "white")
        ImageDraw.Draw(page).text((40, 40 + 7 * i), f"scan {i}: invoice {1000 + i}", fill="black")
        page.save(staging / f"scan-{i:02d}.png")
    keys = {document_key(f"scan-{i:02d}.png") for i in range(50)}
    dropped = time.monotonic()
    for path in sorted(staging.iterdir()):
        path.rename(inbox / path.name)  # a move, as a scanner's upload folder would do

    deadline = dropped + 300
    while stages.make_index(settings).document_ids() < keys:
        assert time.monotonic() < deadline, f"not all 50 searchable after 300 s: {server.runs()}"
        time.sleep(3)
    searchable_s = time.monotonic() - dropped

    runs = [r for r in server.runs() if r["jobName"] == "ingest_job"]
    assert 1 <= len(runs) <= 3, runs
    server.wait_for_run(lambda r: r["jobName"] == "ingest_job")
    assert all(server.wait_for_run(lambda r, i=r["runId"]: r["runId"] == i)["status"] == "SUCCESS" for r in runs)
    assert all(EmbeddingArtifact.read(settings.embeddings_dir / k).fingerprint for k in keys)
    print(f"50 files searchable after {searchable_s:.1f} s in {len(runs)} run(s)")


@contextlib.contextmanager
def browser():
    """Debian's Chromium driven by Playwright (no browser download: executable_path)."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            chromium.close()
