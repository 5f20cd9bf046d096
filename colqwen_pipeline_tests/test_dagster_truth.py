"""What Dagster's own webserver says about every document after one breaks (issue 25), read through
the GraphQL API its UI uses, after real runs in every path: the CLI, the sensor under a real daemon,
a UI backfill over a range (the ``launchPartitionBackfill`` mutation the UI sends), the nightly
schedule ticked by the daemon, and a file deleted while nothing ran.

In each, a document whose stages are current is materialized and never failed, the broken one is
failed from its first failed stage on with its cause on that partition, and the runs carry their
trigger. A run that is about to fail re-confirms the current stages (``defs/assets.py``); without
that, Dagster marks every document of the failed run failed, and these tests fail."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import REPO, SAMPLES
from colqwen_pipeline_tests.dagster_processes import GraphQL, daemon, webserver

pytestmark = pytest.mark.slow
ASSETS = ["raw_documents", "page_images", "page_embeddings", "milvus_collection"]
OLD = time.time() - 3600
STATUSES = """{ assetNodes { assetKey { path } assetPartitionStatuses {
    ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } }"""
PARTITION_PAGE = """query ($assetKey: AssetKeyInput!, $partitionKey: String!) {
  assetOrError(assetKey: $assetKey) { ... on Asset {
    definition { latestRunForPartition(partition: $partitionKey) { status } }
    assetEventHistory(partitions: [$partitionKey], limit: 100,
                      eventTypeSelectors: [MATERIALIZATION, OBSERVATION, FAILED_TO_MATERIALIZE]) {
      results { __typename ... on ObservationEvent { description } } } } } }"""
PARTITION_KEYS = """{ assetNodes { assetKey { path } partitionKeys } }"""
BACKFILL = """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status } } }"""
SCHEDULE_TICKS = """{ scheduleOrError(scheduleSelector: {repositoryLocationName: "colqwen_pipeline.definitions",
    repositoryName: "__repository__", scheduleName: "nightly_reindex"}) {
    ... on Schedule { scheduleState { ticks(limit: 5) { status skipReason runIds } } } } }"""


@pytest.fixture
def home(state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """A Dagster home with the project's dagster.yaml (the ``gpu`` pool, the run queue), shared by
    this test, its webserver and its daemon."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    instance = dg.DagsterInstance.get()
    yield instance
    instance.dispose()


def scans(settings, count: int) -> list[str]:
    """``count`` one-page scans (distinct pixels), settled; their partition keys in inbox order."""
    for i in range(count):
        path = settings.inbox / f"scan-{i}.png"
        Image.new("RGB", (64, 80), (40 * i % 256, 90, 200 - 20 * i)).save(path)
        os.utime(path, (OLD, OLD))
    return [document_key(f"scan-{i}.png") for i in range(count)]


def change(path: Path) -> None:
    Image.new("RGB", (64, 80), (1, 2, 3)).save(path)
    os.utime(path, (OLD + 10, OLD + 10))


def add_broken(settings) -> str:
    """A truncated PDF, as a half-finished download leaves it."""
    data = (SAMPLES / "pump_maintenance_manual.pdf").read_bytes()
    (settings.inbox / "truncated.pdf").write_bytes(data[: len(data) // 3])
    os.utime(settings.inbox / "truncated.pdf", (OLD, OLD))
    return document_key("truncated.pdf")


def statuses(ui: GraphQL) -> dict[str, tuple[set[str], set[str]]]:
    """asset -> (materialized, failed) partitions, as the UI's asset pages read them."""
    answer = {}
    for node in ui.graphql(STATUSES)["assetNodes"]:
        status = node["assetPartitionStatuses"]
        answer[node["assetKey"]["path"][-1]] = (set(status["materializedPartitions"]), set(status["failedPartitions"]))
    return answer


def assert_truthful(ui: GraphQL, good: list[str], broken: str) -> None:
    """Every good document materialized and not failed in all four assets; the broken one
    materialized in raw_documents only, failed from page_images on, its cause on its page."""
    seen = statuses(ui)
    for asset in ASSETS:
        materialized, failed = seen[asset]
        assert set(good) <= materialized and not set(good) & failed, (asset, sorted(failed))
    assert broken in seen["raw_documents"][0] and broken not in seen["raw_documents"][1]
    for asset in ASSETS[1:]:
        assert broken in seen[asset][1] and broken not in seen[asset][0], asset
    page = ui.graphql(PARTITION_PAGE, {"assetKey": {"path": ["page_images"]}, "partitionKey": broken})
    events = page["assetOrError"]["assetEventHistory"]["results"]
    causes = [e["description"] for e in events if e["__typename"] == "ObservationEvent"]
    assert causes and causes[0].startswith("truncated.pdf: ") and "\n" not in causes[0], causes
    assert page["assetOrError"]["definition"]["latestRunForPartition"]["status"] == "FAILURE"


def wait_for(condition: Callable[[], object], what: str, log: Path, timeout_s: float = 300) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(1.0)
    return value


def finished_runs(instance: dg.DagsterInstance, job: str, trigger: str) -> list[dg.DagsterRun]:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job, tags={"colqwen/trigger": trigger}))
    return runs if runs and all(run.is_finished for run in runs) else []


def test_the_cli_fails_the_broken_document_alone_in_the_webservers_view(state, home, tmp_path):
    """Six scans indexed; then one changes and a truncated PDF arrives. The next ingest's run spans
    the changed scan, four current ones and the PDF (ranges cover current documents), and fails."""
    keys = scans(state, 6)
    ingest(state, instance=home, echo=lambda _: None)
    change(state.inbox / "scan-2.png")
    broken = add_broken(state)

    summary = ingest(state, instance=home, echo=lambda _: None)

    assert list(summary.failed) == [broken] and summary.runs == 1
    run = home.get_runs(limit=1)[0]
    assert run.is_failure and run.tags["colqwen/trigger"] == "cli"
    assert run.tags["dagster/asset_partition_range_start"] == keys[2]  # the range spans current documents
    with webserver(tmp_path) as ui:
        assert_truthful(ui, keys, broken)
    again = ingest(state, instance=home, echo=lambda _: None)  # nothing changed: no run, the failure listed
    assert again.runs == 0 and again.not_retried == [broken] and len(home.get_runs()) == 2


def test_the_sensor_under_a_real_daemon_tells_the_truth_and_removes_what_was_deleted(
    state, home, tmp_path, monkeypatch
):
    """A file deleted while nothing ran is removed at the daemon's first tick; a later tick's run
    over a changed scan, current ones and a truncated PDF fails the PDF alone."""
    monkeypatch.setenv("COLQWEN_SENSOR_INTERVAL_S", "2")
    keys = scans(state, 4)
    ingest(state, instance=home, echo=lambda _: None)
    (state.inbox / "scan-3.png").unlink()  # deleted while nothing ran
    gone, keys = keys[3], keys[:3]
    log = tmp_path / "dagster-daemon.log"

    with daemon(tmp_path), webserver(tmp_path) as ui:
        wait_for(lambda: finished_runs(home, "remove_documents_job", "sensor"), "the removal run", log)
        partitions = {n["assetKey"]["path"][-1]: n["partitionKeys"] for n in ui.graphql(PARTITION_KEYS)["assetNodes"]}
        assert all(gone not in partitions[asset] and set(keys) <= set(partitions[asset]) for asset in ASSETS)
        assert not (state.embeddings_dir / gone).exists()
        change(state.inbox / "scan-0.png")
        broken = add_broken(state)
        (run,) = wait_for(lambda: finished_runs(home, "ingest_job", "sensor"), "the sensor's ingest run", log)
        assert run.is_failure and run.tags["dagster/asset_partition_range_end"] == broken
        assert_truthful(ui, keys, broken)


def test_a_ui_backfill_over_a_range_and_the_nightly_schedule_tell_the_truth(state, home, tmp_path, monkeypatch):
    """The daemon ticks the schedule every minute here: over an unchanged inbox it launches nothing.
    Then a backfill over all documents, launched as the UI launches it, fails the broken one alone."""
    monkeypatch.setenv("COLQWEN_REINDEX_CRON", "* * * * *")
    monkeypatch.setenv("COLQWEN_SENSOR_INTERVAL_S", "3600")  # one tick at start, then out of the way
    keys = scans(state, 3)
    ingest(state, instance=home, echo=lambda _: None)
    log = tmp_path / "dagster-daemon.log"

    with daemon(tmp_path), webserver(tmp_path) as ui:

        def schedule_tick() -> dict | None:
            ticks = ui.graphql(SCHEDULE_TICKS)["scheduleOrError"]["scheduleState"]["ticks"]
            return next((t for t in ticks if t["status"] in ("SKIPPED", "SUCCESS", "FAILURE")), None)

        tick = wait_for(schedule_tick, "a schedule tick", log, timeout_s=150)
        assert tick["status"] == "SKIPPED" and tick["runIds"] == [], tick
        assert tick["skipReason"].startswith("nothing to reindex: 3 document(s) current")
        broken = add_broken(state)
        home.add_dynamic_partitions("documents", [broken])  # the UI's "add partition"
        params = {"partitionNames": [*keys, broken], "assetSelection": [{"path": [a]} for a in ASSETS]}
        launched = ui.graphql(BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def backfill_done() -> str | None:
            answer = ui.graphql(BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
            return answer["status"] if answer["status"] not in ("REQUESTED", "CANCELING") else None

        wait_for(backfill_done, "the backfill", log)
        (run,) = home.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))
        assert run.is_failure and run.tags["colqwen/trigger"] == "ui"
        assert_truthful(ui, keys, broken)


def test_server_uploads_are_tagged_as_the_servers(state, home):
    from colqwen_pipeline.defs.instance import ingest_upload

    (path,) = [state.inbox / f"scan-{i}.png" for i in range(1)]
    scans(state, 1)

    summary = ingest_upload(state, path)

    assert summary.failed == {} and summary.runs == 1
    assert [run.tags["colqwen/trigger"] for run in home.get_runs()] == ["server"]


@pytest.fixture(autouse=True)
def _quiet_dagster_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The daemon and webserver inherit this environment: no telemetry prompt, no UI pop-ups."""
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    yield
