"""The real checks in real Dagster runs (tiny model, Milvus Lite, a test instance): each appears on
its asset, passes on a good ingest and fails on broken state."""

from __future__ import annotations

import dagster as dg

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.definitions import RESOURCES, defs
from colqwen_pipeline.defs.assets import ASSETS
from colqwen_pipeline.defs.runner import collection_checks, ingest, run_check_evaluations, run_materializations
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import add_sample

INVOICE = "scanned_invoice.jpg"
MANUAL = "pump_maintenance_manual.pdf"


def materialize_document(instance: dg.DagsterInstance, key: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("documents", [key])
    return dg.materialize(ASSETS, partition_key=key, instance=instance, resources=RESOURCES, raise_on_error=False)


def evaluations(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in run_check_evaluations(instance, result.run_id)}


def test_every_check_is_declared_on_its_asset():
    keys = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}

    assert keys == {
        ("page_images", "pages_complete"),
        ("page_embeddings", "embedding_dimension"),
        ("page_embeddings", "throughput"),
        ("milvus_collection", "retrieval_quality"),
        ("milvus_collection", "index_fidelity"),
        ("milvus_collection", "collection_consistency"),
    }


def test_all_checks_pass_on_a_freshly_ingested_document(eval_state, instance):
    add_sample(eval_state, INVOICE)
    key = document_key(INVOICE)

    result = materialize_document(instance, key)

    assert result.success
    checks = evaluations(instance, result)
    assert {name: e.passed for name, e in checks.items()} == dict.fromkeys(
        ["pages_complete", "embedding_dimension", "throughput", "retrieval_quality", "index_fidelity"]
        + ["collection_consistency"],
        True,
    )
    assert checks["embedding_dimension"].partition == key
    dimension = {k: v.value for k, v in checks["embedding_dimension"].metadata.items()}
    assert dimension["dim"] == 128 and dimension["tokens_per_page_min"] == dimension["tokens_per_page_max"] > 0
    speed = {k: v.value for k, v in checks["throughput"].metadata.items()}
    assert speed["device"] == "cpu" and speed["forward_pages_per_s"] > 0 and speed["seconds_per_page"] > 0
    assert speed["model_load_s"] >= 0 and speed["end_to_end_pages_per_s"] > 0
    quality = checks["retrieval_quality"]
    assert quality.metadata["random_weights"].value is True  # the demo says the numbers are near chance
    assert "RANDOM-WEIGHT TEST MODEL" in quality.description
    assert quality.metadata["queries"].value == 1  # only the invoice's query has its document indexed
    assert len(quality.metadata["per_query"].value.records) == 1


def test_broken_embeddings_block_the_index(eval_state, instance, monkeypatch):
    monkeypatch.setenv("COLQWEN_EMBEDDING_DIM", "64")  # the model gives 128: the check must refuse
    add_sample(eval_state, INVOICE)
    key = document_key(INVOICE)

    result = materialize_document(instance, key)

    assert not result.success
    check = evaluations(instance, result)["embedding_dimension"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "expected 64" in check.description
    materialized = {m.asset_key.to_user_string() for m in run_materializations(instance, result.run_id)}
    assert "milvus_collection" not in materialized
    assert stages.make_index(eval_state).count_tokens(key) == 0


def test_slow_embedding_warns_without_failing_the_run(eval_state, instance, monkeypatch):
    monkeypatch.setenv("COLQWEN_MIN_PAGES_PER_S_CPU", "1000000")
    add_sample(eval_state, INVOICE)

    result = materialize_document(instance, document_key(INVOICE))

    assert result.success
    check = evaluations(instance, result)["throughput"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "BELOW the cpu floor" in check.description


def test_collection_checks_fail_when_the_index_loses_a_document(eval_state, instance, monkeypatch):
    monkeypatch.setenv("COLQWEN_QUALITY_MIN_NDCG_AT_5", "0")  # random weights: rank order is luck
    monkeypatch.setenv("COLQWEN_FIDELITY_K", "3")
    add_sample(eval_state, MANUAL)
    key = document_key(MANUAL)
    summary = ingest(eval_state, instance=instance, echo=lambda _: None)
    assert summary.checks == dict.fromkeys(["collection_consistency", "index_fidelity", "retrieval_quality"], "passed")

    stages.make_index(eval_state).delete_document(key)  # the rows vanish, the embeddings stay

    outcomes = collection_checks(instance, echo=lambda _: None)

    assert outcomes["collection_consistency"].startswith("ERROR: 1 inconsistent documents")
    fidelity = outcomes["index_fidelity"]
    assert fidelity.startswith("ERROR: the index does not hold the stored embeddings: recall 0.0000"), fidelity
    quality = outcomes["retrieval_quality"]
    assert quality.startswith("WARN: RANDOM-WEIGHT TEST MODEL, scores near chance") and "recall@5 0.000" in quality
