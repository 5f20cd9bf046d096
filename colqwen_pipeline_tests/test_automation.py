"""The inbox sensor, the reindex schedule and job, removal, and the concurrency configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dagster as dg
import pytest
import yaml
from PIL import Image

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.definitions import RESOURCES, defs
from colqwen_pipeline.defs.automation import inbox_sensor, reindex_schedule, remove_documents_job
from colqwen_pipeline.defs.runner import ingest, run_materializations
from colqwen_pipeline.defs.runs import RANGE_END, RANGE_START
from colqwen_pipeline.embedding import registry
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import REPO, add_sample

OLD = time.time() - 3600


def settled(path):
    os.utime(path, (OLD, OLD))
    return path


def tick(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=RESOURCES)
    result = inbox_sensor(context)
    return result, result.cursor


def ranges(result) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests if r.job_name == "ingest_job"]


def test_sensor_requests_new_files_and_adds_their_partitions(state, instance):
    settled(add_sample(state, "pump_maintenance_manual.pdf"))
    key = document_key("pump_maintenance_manual.pdf")

    result, cursor = tick(instance)

    assert [r.job_name for r in result.run_requests] == ["ingest_job"]
    assert ranges(result) == [(key, key)] and result.run_requests[0].tags["colqwen/trigger"] == "sensor"
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[key]]
    again, _ = tick(instance, cursor)
    assert again.run_requests == []


def test_sensor_groups_a_drop_of_files_into_runs_of_at_most_the_limit(state, instance, monkeypatch):
    monkeypatch.setenv("COLQWEN_MAX_DOCUMENTS_PER_RUN", "2")
    for i in range(5):
        Image.new("RGB", (40, 40), "white").save(state.inbox / f"scan-{i}.png")
        settled(state.inbox / f"scan-{i}.png")
    keys = [document_key(f"scan-{i}.png") for i in range(5)]

    result, _ = tick(instance)

    assert len(result.run_requests) == 3  # ceil(5 / 2)
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [keys]
    assert ranges(result) == [(keys[0], keys[1]), (keys[2], keys[3]), (keys[4], keys[4])]
    assert len({r.run_key for r in result.run_requests}) == 3


def test_sensor_waits_for_files_still_being_written(state, instance):
    path = add_sample(state, "scanned_invoice.jpg")  # mtime is now: could still be growing

    first, cursor = tick(instance)
    settled(path)  # untouched for COLQWEN_SETTLE_S since
    second, _ = tick(instance, cursor)

    assert first.run_requests == [] and cursor == ""  # no cursor: the next tick plans again
    key = document_key("scanned_invoice.jpg")
    assert ranges(second) == [(key, key)]


def test_sensor_reingests_changed_content_with_a_new_run_key(state, instance):
    path = settled(add_sample(state, "pump_maintenance_manual.pdf", "manual.pdf"))
    first, cursor = tick(instance)
    instance.add_dynamic_partitions("documents", [document_key("manual.pdf")])
    path.write_bytes((REPO / "data/inbox/acme_annual_report_2025.pdf").read_bytes())
    settled(path)

    second, _ = tick(instance, cursor)

    key = document_key("manual.pdf")
    assert ranges(second) == [(key, key)] and second.dynamic_partitions_requests == []
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


def test_sensor_removes_deleted_files(state, instance):
    path = settled(add_sample(state, "pump_maintenance_manual.pdf"))
    key = document_key(path.name)
    instance.add_dynamic_partitions("documents", [key])
    _, cursor = tick(instance)
    path.unlink()

    result, cursor = tick(instance, cursor)

    assert [r.job_name for r in result.run_requests] == ["remove_documents_job"]
    assert result.run_requests[0].run_config["ops"]["remove_documents"]["config"]["keys"] == [key]
    assert result.run_requests[0].tags["colqwen/trigger"] == "sensor"
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[key]]


def test_an_unchanged_tick_over_10000_files_plans_nothing_and_keeps_a_short_cursor(state, instance, monkeypatch):
    from colqwen_pipeline.defs import automation

    for i in range(10_000):
        (state.inbox / f"doc-{i:05d}.png").write_bytes(b"x")
        os.utime(state.inbox / f"doc-{i:05d}.png", (OLD, OLD))
    _, cursor = tick(instance)
    planned = []
    real_plan = automation.plan_inbox
    monkeypatch.setattr(automation, "plan_inbox", lambda *a: planned.append(1) or real_plan(*a))

    result, again = tick(instance, cursor)

    assert result.run_requests == [] and planned == [] and again == cursor
    assert len(cursor) <= 64  # a fingerprint, not every file
    (state.inbox / "doc-00007.png").write_bytes(b"y")
    os.utime(state.inbox / "doc-00007.png", (OLD, OLD + 1))
    changed, _ = tick(instance, cursor)
    assert planned == [1] and ranges(changed)  # one changed file: the tick plans again


def test_schedule_requests_runs_only_for_documents_that_need_work(state, instance, monkeypatch):
    monkeypatch.setenv("COLQWEN_MAX_DOCUMENTS_PER_RUN", "2")
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (40, 40), "white").save(state.inbox / name)
        settled(state.inbox / name)
    keys = [document_key(name) for name in ("a.png", "b.png", "c.png")]

    requests = schedule_tick(instance)

    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in requests] == [(keys[0], keys[1]), (keys[2], keys[2])]
    assert {r.tags["colqwen/trigger"] for r in requests} == {"schedule"}
    assert instance.get_dynamic_partitions("documents") == keys  # added before any run targets them
    assert reindex_schedule.job_name == "ingest_job"
    ingest(state, instance=instance, echo=lambda _: None)
    assert schedule_tick(instance) == []  # an unchanged inbox launches nothing
    Image.new("RGB", (40, 40), "black").save(state.inbox / "b.png")
    settled(state.inbox / "b.png")
    os.utime(state.inbox / "b.png", (OLD + 5, OLD + 5))
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in schedule_tick(instance)] == [(keys[1], keys[1])]


def schedule_tick(instance) -> list:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    context = dg.build_schedule_context(instance=instance, resources=RESOURCES, scheduled_execution_time=now)
    return list(reindex_schedule.evaluate_tick(context).run_requests or [])


def test_the_schedule_runs_at_the_configured_cron():
    code = "from colqwen_pipeline.defs.automation import reindex_schedule as s; print(s.cron_schedule)"
    env = os.environ | {"COLQWEN_REINDEX_CRON": "15 3 * * 1"}

    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)

    assert output.stdout.strip() == "15 3 * * 1"  # not the default "0 2 * * *" (the README's table pins that)


def test_a_bulk_run_indexes_good_documents_and_fails_the_broken_one_alone(state, instance, monkeypatch):
    add_sample(state, "pump_maintenance_manual.pdf")
    add_sample(state, "scanned_invoice.jpg")
    (state.inbox / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    monkeypatch.setenv("COLQWEN_EMBED_WAVE_PAGES", "1")  # a wave per document: each asks for the model
    registry.unload()  # loaded by an earlier test, the model would count 0 loads here
    loads_before = registry.loads_so_far()

    summary = ingest(state, instance=instance, echo=lambda _: None)

    good = {document_key("pump_maintenance_manual.pdf"), document_key("scanned_invoice.jpg")}
    index = stages.make_index(state)
    assert all(index.count_tokens(key) > 0 for key in good)
    assert index.count_tokens(document_key("broken.pdf")) == 0
    assert (
        list(summary.failed) == [document_key("broken.pdf")]
        and "broken.pdf" in summary.failed[document_key("broken.pdf")]
    )
    (run,) = instance.get_runs()
    assert run.is_failure and run.tags["colqwen/trigger"] == "cli" and run.job_name == "ingest_job"
    indexed = {
        m.partition for m in run_materializations(instance, run.run_id) if m.asset_key.path == ["milvus_collection"]
    }
    assert indexed == good
    assert instance.get_materialized_partitions(dg.AssetKey("milvus_collection")) == good
    assert registry.loads_so_far() - loads_before == 1  # one model load for the whole run
    failure = next(e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure)
    description = failure.dagster_event.step_failure_data.user_failure_data.description
    assert description.startswith("1 of 3 document(s) failed; the others are indexed: broken.pdf:")
    assert [h.doc_id for h in stages.search("invoice", top_k=5, settings=state)]


def test_remove_job_deletes_rows_and_artifacts(state, instance):
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    key = document_key("scanned_invoice.jpg")
    config = {"ops": {"remove_documents": {"config": {"keys": [key]}}}}

    result = remove_documents_job.execute_in_process(run_config=config, instance=instance, resources=RESOURCES)

    assert result.success
    assert stages.make_index(state).count_tokens(key) == 0
    assert not (state.embeddings_dir / key).exists() and not (state.pages_dir / key).exists()


def test_gpu_steps_share_a_pool_of_one_and_runs_are_queued():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert 1 <= config["concurrency"]["runs"]["max_concurrent_runs"] <= 8
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("page_embeddings")).pools == {"gpu"}


@pytest.mark.slow  # a rebuild over several runs
def test_model_change_rebuilds_into_a_new_collection_and_switches_when_complete(state, instance, tmp_path, monkeypatch):
    """Across runs: with one document per run, the rebuild is complete only after the second run;
    until then search serves the old model's complete index."""
    from colqwen_pipeline.embedding.tiny import build_tiny_model
    from colqwen_pipeline.settings import Settings

    add_sample(state, "pump_maintenance_manual.pdf")
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    index = stages.make_index(state)
    old_fingerprint, old_rows = index.live_fingerprint(), index.count_tokens()
    monkeypatch.setenv("COLQWEN_MODEL", str(build_tiny_model(tmp_path / "other-model", seed=1)))
    monkeypatch.setenv("COLQWEN_MAX_DOCUMENTS_PER_RUN", "1")
    settings = Settings()
    messages: list[str] = []
    first = next(k for k in instance.get_dynamic_partitions("documents"))

    ingest(settings, [str(settings.inbox / "pump_maintenance_manual.pdf")], instance=instance, echo=messages.append)

    assert first == document_key("pump_maintenance_manual.pdf")
    assert index.live_fingerprint() == old_fingerprint and index.count_tokens() == old_rows
    assert len(stages.search("pump", top_k=5, settings=state)) == 4

    summary = ingest(settings, instance=instance, echo=messages.append)

    assert summary.failed == {}
    new_fingerprint = index.live_fingerprint()
    assert new_fingerprint != old_fingerprint
    assert index.document_ids() == {document_key("pump_maintenance_manual.pdf"), document_key("scanned_invoice.jpg")}
    with index.client() as client:
        assert index.rebuild_target(old_fingerprint).collection_info(client)["fingerprint"] == old_fingerprint


def test_index_schema_upgrade_is_refused_for_writes_and_rebuilt_by_a_run(state, instance):
    """Collections written by an older index schema are kept and served until a run has rebuilt
    everything into collections of the current schema."""
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.index.base import IndexRefused
    from colqwen_pipeline.index.milvus import SCHEMA_VERSION, MilvusIndex

    class OlderSchema(MilvusIndex):
        schema_version = "2"

    add_sample(state, "pump_maintenance_manual.pdf")
    key = document_key("pump_maintenance_manual.pdf")
    assert run_documents(state, [key], until="embeddings").failed == {}
    stages.index_stage(state, key, OlderSchema.from_settings(state))
    index = stages.make_index(state)
    refusal = f"index schema 2, this version writes {SCHEMA_VERSION}: run `colqwen-pipeline ingest`"
    with pytest.raises(IndexRefused, match=refusal):
        stages.index_stage(state, key)
    assert len(stages.search("pump", top_k=5, settings=state)) > 0  # still served

    messages: list[str] = []
    report = run_documents(state, [key], say=messages.append)

    assert report.failed == {} and report.switched_to == index.live_fingerprint()
    assert any(f"index schema changed (2 -> {SCHEMA_VERSION})" in m for m in messages)
    assert index.rebuild_reason(index.live_fingerprint()) is None
    assert index.document_ids() == {key} and len(stages.search("pump", top_k=5, settings=state)) > 0
    with index.client() as client:
        old = OlderSchema.from_settings(state).rebuild_target(index.live_fingerprint())
        assert old.collection_info(client)["schema"] == "2"  # kept, never dropped implicitly


def test_sensor_never_hashes_a_file_over_the_size_cap(state, instance, monkeypatch):
    """A 300 GB sparse '%PDF' once made every tick time out: it is handed on unread, and refused by its run."""
    from colqwen_pipeline.bulk import plan

    huge = state.inbox / "huge.pdf"
    with huge.open("wb") as handle:
        handle.write(b"%PDF-1.7\n")
        handle.truncate(300 * 2**30)
    settled(huge)
    settled(add_sample(state, "scanned_invoice.jpg"))
    hashed = []
    monkeypatch.setattr(plan, "file_sha256", lambda p: hashed.append(p.name))

    result, _ = tick(instance)

    assert hashed == []
    keys = {document_key("huge.pdf"), document_key("scanned_invoice.jpg")}
    assert {k for r in result.dynamic_partitions_requests for k in r.partition_keys} == keys
    assert {k for r in ranges(result) for k in r} == keys


def test_first_sensor_tick_leaves_a_failed_file_until_it_changes(state, instance):
    """A file that failed in a run of this instance (here a CLI ingest) is not retried by a first
    tick, as after a sensor run's failure; once it changes, or is deleted, the sensor acts on it."""
    settled(add_sample(state, "scanned_invoice.jpg"))
    broken = state.inbox / "broken.pdf"
    broken.write_bytes(b"")
    settled(broken)
    key = document_key("broken.pdf")
    ingest(state, instance=instance, echo=lambda _: None)

    first, cursor = tick(instance)

    assert first.run_requests == []
    broken.write_bytes(b"%PDF-1.7 another try")
    os.utime(broken, (OLD + 60, OLD + 60))
    changed, cursor = tick(instance, cursor)
    assert ranges(changed) == [(key, key)]
    broken.unlink()
    deleted, _ = tick(instance, cursor)
    removal = [r for r in deleted.run_requests if r.job_name == remove_documents_job.name]
    assert [r.run_config["ops"]["remove_documents"]["config"]["keys"] for r in removal] == [[key]]


@pytest.mark.slow  # a subprocess ingest, then the sensor
def test_first_sensor_tick_after_a_cli_ingest_requests_only_new_files(state, tmp_path):
    """Issue 16 item 7: `colqwen-pipeline ingest`, then `dagster dev` (an empty sensor cursor, on the
    CLI's Dagster home or on a fresh one): the indexed documents are not requested again."""
    import subprocess
    import sys
    from pathlib import Path

    invoice = settled(add_sample(state, "scanned_invoice.jpg"))
    settled(add_sample(state, "pump_maintenance_manual.pdf"))
    indexed = {document_key("scanned_invoice.jpg"), document_key("pump_maintenance_manual.pdf")}
    clean = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "colqwen-pipeline"), "ingest"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    os.utime(invoice, (OLD - 60, OLD - 60))  # touched, same content: hashed by the plan, not ingested

    with dg.instance_for_test() as fresh:  # `dagster dev` without DAGSTER_HOME: a temporary home
        result, _ = tick(fresh)
        assert result.run_requests == []
        assert {k for r in result.dynamic_partitions_requests for k in r.partition_keys} == indexed

    instance = dg.DagsterInstance.from_config(str(state.dagster_home))  # the CLI's home
    try:
        assert set(instance.get_dynamic_partitions("documents")) == indexed
        first, cursor = tick(instance)
        assert first.run_requests == [] and first.dynamic_partitions_requests == []
        settled(add_sample(state, "acme_annual_report_2025.pdf"))

        second, _ = tick(instance, cursor)

        new = document_key("acme_annual_report_2025.pdf")
        assert ranges(second) == [(new, new)]
        assert [list(r.partition_keys) for r in second.dynamic_partitions_requests] == [[new]]
    finally:
        instance.dispose()
