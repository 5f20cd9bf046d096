"""The inbox sensor, the reindex schedule and job, removal, and the concurrency configuration."""

from __future__ import annotations

import json
import os
import time

import dagster as dg
import pytest
import yaml

from colqwen_pipeline import inbox_watch, stages
from colqwen_pipeline.definitions import RESOURCES, defs
from colqwen_pipeline.defs.automation import inbox_sensor, reindex_job, reindex_schedule, remove_documents_job
from colqwen_pipeline.embedding import service
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.runner import ingest
from colqwen_pipeline_tests.conftest import REPO, add_sample

OLD = time.time() - 3600


def settled(path):
    os.utime(path, (OLD, OLD))
    return path


def tick(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = inbox_sensor(context)
    return result, result.cursor


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_sensor_requests_new_files_and_adds_their_partitions(state, instance):
    settled(add_sample(state, "pump_maintenance_manual.pdf"))
    key = document_key("pump_maintenance_manual.pdf")

    result, cursor = tick(instance)

    assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("ingest_document", key)]
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[key]]
    again, _ = tick(instance, cursor)
    assert again.run_requests == []


def test_sensor_waits_for_files_still_being_written(state, instance):
    add_sample(state, "scanned_invoice.jpg")  # mtime is now: could still be growing

    first, cursor = tick(instance)
    second, _ = tick(instance, cursor)  # unchanged since the last tick: settled

    assert first.run_requests == []
    assert [r.partition_key for r in second.run_requests] == [document_key("scanned_invoice.jpg")]


def test_sensor_reingests_changed_content_with_a_new_run_key(state, instance):
    path = settled(add_sample(state, "pump_maintenance_manual.pdf", "manual.pdf"))
    first, cursor = tick(instance)
    path.write_bytes((REPO / "data/inbox/acme_annual_report_2025.pdf").read_bytes())
    settled(path)

    second, _ = tick(instance, cursor)

    assert [r.partition_key for r in second.run_requests] == [document_key("manual.pdf")]
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
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[key]]
    assert key not in json.loads(cursor)


def test_sensor_tick_over_10000_unchanged_files_hashes_nothing(state, instance, monkeypatch):
    for i in range(10_000):
        (state.inbox / f"doc-{i:05d}.png").write_bytes(b"x")
        os.utime(state.inbox / f"doc-{i:05d}.png", (OLD, OLD))
    _, cursor = tick(instance)
    hashed = []
    real_hash = inbox_watch.file_sha256
    monkeypatch.setattr(inbox_watch, "file_sha256", lambda p: hashed.append(p) or real_hash(p))

    result, _ = tick(instance, cursor)

    assert result.run_requests == [] and hashed == []
    assert len(json.loads(cursor)) == 10_000


def test_schedule_requests_the_reindex_job(instance):
    context = dg.build_schedule_context(instance=instance)
    requests = list(reindex_schedule.evaluate_tick(context).run_requests or [])
    assert [r.job_name for r in requests] in ([None], ["reindex_job"])
    assert reindex_schedule.cron_schedule == "0 2 * * *"


def test_reindex_indexes_good_documents_and_fails_the_broken_one_alone(state, instance):
    add_sample(state, "pump_maintenance_manual.pdf")
    add_sample(state, "scanned_invoice.jpg")
    (state.inbox / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    loads_before = service.loads_so_far()

    result = reindex_job.execute_in_process(instance=instance, resources=RESOURCES, raise_on_error=False)

    assert not result.success
    index = stages.make_index(state)
    assert index.count_tokens(document_key("pump_maintenance_manual.pdf")) > 0
    assert index.count_tokens(document_key("scanned_invoice.jpg")) > 0
    assert index.count_tokens(document_key("broken.pdf")) == 0
    materialized = {e.event_specific_data.materialization.partition for e in result.get_asset_materialization_events()}
    assert materialized == {document_key("pump_maintenance_manual.pdf"), document_key("scanned_invoice.jpg")}
    assert service.loads_so_far() - loads_before <= 1  # one model load for the whole run
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "broken.pdf" in failure.step_failure_data.user_failure_data.description


def test_remove_job_deletes_rows_and_artifacts(state, instance):
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    key = document_key("scanned_invoice.jpg")
    config = {"ops": {"remove_documents": {"config": {"keys": [key]}}}}

    result = remove_documents_job.execute_in_process(run_config=config, instance=instance)

    assert result.success
    assert stages.make_index(state).count_tokens(key) == 0
    assert not (state.embeddings_dir / key).exists() and not (state.pages_dir / key).exists()


def test_gpu_steps_share_a_pool_of_one_and_runs_are_queued():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert 1 <= config["concurrency"]["runs"]["max_concurrent_runs"] <= 8
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("page_embeddings")).pools == {"gpu"}
    reindex_op = defs.resolve_job_def("reindex_job").graph.node_defs[0]
    assert reindex_op.pool == "gpu"


def test_model_change_rebuilds_into_a_new_collection_and_switches_when_complete(state, instance, tmp_path, monkeypatch):
    from colqwen_pipeline.embedding.tiny import build_tiny_model
    from colqwen_pipeline.reindex import reindex_all
    from colqwen_pipeline.settings import Settings

    add_sample(state, "pump_maintenance_manual.pdf")
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    index = stages.make_index(state)
    old_fingerprint, old_rows = index.live_fingerprint(), index.count_tokens()
    monkeypatch.setenv("COLQWEN_MODEL", str(build_tiny_model(tmp_path / "other-model", seed=1)))
    settings = Settings()

    rebuild = reindex_all(settings, say=lambda _: None)
    next(rebuild)  # one document rebuilt, one to go: search still serves the complete old index
    assert index.live_fingerprint() == old_fingerprint and index.count_tokens() == old_rows
    assert len(stages.search("pump", top_k=5, settings=state)) == 4
    outcomes = [*rebuild]

    assert all(o.ok for o in outcomes)
    new_fingerprint = index.live_fingerprint()
    assert new_fingerprint != old_fingerprint
    assert index.document_ids() == {document_key("pump_maintenance_manual.pdf"), document_key("scanned_invoice.jpg")}
    with index.client() as client:
        assert index.rebuild_target(old_fingerprint).collection_info(client)["fingerprint"] == old_fingerprint


def test_index_schema_upgrade_is_refused_for_writes_and_rebuilt_by_reindex(state):
    """Collections written by an older index schema are kept and served until reindex_job has
    rebuilt everything into collections of the current schema."""
    from colqwen_pipeline.index.milvus import IndexRefused, MilvusIndex
    from colqwen_pipeline.reindex import index_document, reindex_all

    class OlderSchema(MilvusIndex):
        schema_version = "2"

    add_sample(state, "pump_maintenance_manual.pdf")
    key = document_key("pump_maintenance_manual.pdf")
    assert index_document(state, key, lambda _: None, OlderSchema.from_settings(state)).ok
    index = stages.make_index(state)
    with pytest.raises(IndexRefused, match="index schema 2, this version writes 3: run reindex_job"):
        stages.index_stage(state, key)
    assert len(stages.search("pump", top_k=5, settings=state)) > 0  # still served

    messages: list[str] = []
    assert all(outcome.ok for outcome in reindex_all(state, say=messages.append))
    assert any("index schema changed (2 -> 3)" in m for m in messages)
    assert index.rebuild_reason(index.live_fingerprint()) is None
    assert index.document_ids() == {key} and len(stages.search("pump", top_k=5, settings=state)) > 0
    with index.client() as client:
        old = OlderSchema.from_settings(state).rebuild_target(index.live_fingerprint())
        assert old.collection_info(client)["schema"] == "2"  # kept, never dropped implicitly
