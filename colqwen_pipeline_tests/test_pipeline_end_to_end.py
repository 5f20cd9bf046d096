"""The whole flow on a real Dagster instance: sample document -> pages -> tiny model -> Milvus Lite."""

from __future__ import annotations

import dagster as dg
import pytest

from colqwen_pipeline import stages
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.runner import ingest
from colqwen_pipeline_tests.conftest import add_sample


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_ingest_indexes_every_token_and_search_finds_the_document(state, instance):
    add_sample(state, "pump_maintenance_manual.pdf")
    key = document_key("pump_maintenance_manual.pdf")

    summary = ingest(state, instance=instance, echo=lambda _: None)

    assert summary.failed == {}
    assert (summary.documents, summary.pages) == (1, 3)
    artifact = EmbeddingArtifact.read(state.embeddings_dir / key)
    assert stages.make_index(state).count_tokens(key) == artifact.total_tokens == summary.tokens
    hits = stages.search("replace the filter cartridge", top_k=3, settings=state)
    assert [h.doc_id for h in hits] == [key] * 3
    assert sorted(h.page for h in hits) == [1, 2, 3]
    assert all(h.image_path.endswith(".png") and h.document == "pump_maintenance_manual.pdf" for h in hits)
    assert instance.get_dynamic_partitions("documents") == [key]


def test_reingest_leaves_one_copy_of_rows(state, instance):
    add_sample(state, "acme_annual_report_2025.pdf")
    first = ingest(state, instance=instance, echo=lambda _: None)
    rows_after_first = stages.make_index(state).count_tokens()

    second = ingest(state, instance=instance, echo=lambda _: None)

    assert first.tokens == second.tokens == rows_after_first
    assert stages.make_index(state).count_tokens() == rows_after_first


def test_ingest_prunes_documents_removed_from_inbox(state, instance):
    kept = add_sample(state, "pump_maintenance_manual.pdf")
    removed = add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    removed.unlink()

    summary = ingest(state, instance=instance, echo=lambda _: None)

    removed_key = document_key("scanned_invoice.jpg")
    assert summary.removed == 1
    assert stages.make_index(state).count_tokens(removed_key) == 0
    assert not (state.pages_dir / removed_key).exists()
    assert instance.get_dynamic_partitions("documents") == [document_key(kept.name)]


def test_broken_document_fails_alone(state, instance):
    add_sample(state, "pump_maintenance_manual.pdf")
    (state.inbox / "broken.pdf").write_bytes(b"%PDF-1.7\n this is not really a pdf")

    summary = ingest(state, instance=instance, echo=lambda _: None)

    assert summary.documents == 1
    assert list(summary.failed) == [document_key("broken.pdf")]
    assert "broken.pdf" in summary.failed[document_key("broken.pdf")]
    assert stages.make_index(state).count_tokens(document_key("broken.pdf")) == 0


def test_ingest_twice_against_a_milvus_server_keeps_the_checks_passing(state, instance, milvus_uri, monkeypatch):
    """The production path: COLQWEN_MILVUS_URI at a real Milvus 2.3.5 server (it used to refuse
    every document after the first, and Bounded reads missed fresh writes)."""
    from colqwen_pipeline.settings import Settings
    from colqwen_pipeline_tests.conftest import REPO, unique_collection

    monkeypatch.setenv("COLQWEN_MILVUS_URI", milvus_uri)
    monkeypatch.setenv("COLQWEN_COLLECTION", unique_collection("e2e"))
    monkeypatch.setenv("COLQWEN_EVAL_SET", str(REPO / "data" / "eval" / "queries.jsonl"))
    monkeypatch.setenv("COLQWEN_QUALITY_MIN_NDCG_AT_5", "0")  # random weights: rank order is luck
    monkeypatch.setenv("COLQWEN_QUALITY_MIN_RECALL_AT_5", "0")
    monkeypatch.setenv("COLQWEN_INDEX_SEARCH_CONSISTENCY", "Strong")  # the search below runs right after the writes
    settings = Settings()
    for name in ("pump_maintenance_manual.pdf", "scanned_invoice.jpg", "acme_annual_report_2025.pdf"):
        add_sample(settings, name)

    first = ingest(settings, instance=instance, echo=lambda _: None)
    tokens = stages.make_index(settings).count_tokens()
    second = ingest(settings, instance=instance, echo=lambda _: None, force=True)  # every row rewritten

    assert first.failed == {} and second.failed == {} and first.documents == 3
    assert first.checks == dict.fromkeys(["retrieval_quality", "index_fidelity", "collection_consistency"], "passed")
    assert second.checks == first.checks
    assert stages.make_index(settings).count_tokens() == tokens == first.tokens == second.tokens
    hits = stages.search("replace the filter cartridge", top_k=3, settings=settings)
    assert len(hits) == 3 and {h.doc_id for h in hits} <= {
        document_key(n) for n in ("pump_maintenance_manual.pdf", "scanned_invoice.jpg", "acme_annual_report_2025.pdf")
    }
