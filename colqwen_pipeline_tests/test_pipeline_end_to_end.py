"""The whole flow on a real Dagster instance: sample document -> pages -> tiny model -> Milvus Lite."""

from __future__ import annotations

import pytest

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.defs.runner import ingest, run_check_evaluations
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.embedding.registry import embed_queries_cached
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.index.maxsim import maxsim
from colqwen_pipeline_tests.conftest import add_sample


def test_ingest_indexes_every_token_and_search_ranks_pages_by_exact_maxsim(state, instance):
    add_sample(state, "pump_maintenance_manual.pdf")
    add_sample(state, "scanned_invoice.jpg")
    keys = [document_key("pump_maintenance_manual.pdf"), document_key("scanned_invoice.jpg")]

    summary = ingest(state, instance=instance, echo=lambda _: None)

    assert summary.failed == {}
    assert (summary.documents, summary.pages) == (2, 4)
    artifacts = {key: EmbeddingArtifact.read(state.embeddings_dir / key) for key in keys}
    index = stages.make_index(state)
    assert [index.count_tokens(key) for key in keys] == [artifacts[key].total_tokens for key in keys]
    assert sum(a.total_tokens for a in artifacts.values()) == summary.tokens
    # The ranking a user sees is exact MaxSim of the query over every stored page, best first.
    query = embed_queries_cached(state, ["replace the filter cartridge"])[0][0]
    pages = [(key, i + 1, artifacts[key].page_vectors(i)) for key in keys for i in range(len(artifacts[key].pages))]
    scores = maxsim(query, [vectors for _, _, vectors in pages])
    expected = sorted(zip(scores, [(key, page) for key, page, _ in pages], strict=True), reverse=True)[:3]
    hits = stages.search("replace the filter cartridge", top_k=3, settings=state)
    # Scored over the index's stored (7-bit) tokens: within its stated error of exact fp16 MaxSim,
    # so pages whose exact scores are closer than that may trade places.
    error = len(query) * index.score_error_per_token
    exact = {page: float(score) for score, page in zip(scores, [(k, p) for k, p, _ in pages], strict=True)}
    assert [h.score for h in hits] == pytest.approx([exact[(h.doc_id, h.page)] for h in hits], abs=error)
    assert all(exact[(h.doc_id, h.page)] >= float(expected[-1][0]) - 2 * error for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.image_path.endswith(".png") for h in hits)
    assert {h.document for h in hits} <= {"pump_maintenance_manual.pdf", "scanned_invoice.jpg"}
    assert instance.get_dynamic_partitions("documents") == sorted(keys)


def test_reingest_leaves_one_copy_of_rows(state, instance):
    add_sample(state, "acme_annual_report_2025.pdf")
    key = document_key("acme_annual_report_2025.pdf")
    first = ingest(state, instance=instance, echo=lambda _: None)
    rows_after_first = stages.make_index(state).count_tokens()
    generation_before = {row["generation"] for row in stages.make_index(state).page_rows(key)}

    second = ingest(state, instance=instance, echo=lambda _: None, force=True)  # every row written again

    index = stages.make_index(state)
    assert {row["generation"] for row in index.page_rows(key)} - generation_before  # a new copy was written
    assert len({row["generation"] for row in index.page_rows(key)}) == 1  # ... and the old one is gone
    assert first.tokens == second.tokens == rows_after_first
    assert index.count_tokens() == rows_after_first


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
    # Random weights: rank order is luck, so no minimum can hold; what must hold is asserted below.
    monkeypatch.setenv("COLQWEN_QUALITY_MIN_NDCG_AT_5", "0")
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
    # The check judged real rankings: 8 queries over the 8 indexed pages (2 ask about the unindexed
    # memo), each ranking 10 deep, so every relevant page is found by rank 10 whatever the weights.
    (quality,) = [
        e for e in run_check_evaluations(instance, instance.get_runs()[0].run_id) if e.check_name == "retrieval_quality"
    ]
    metadata = {name: value.value for name, value in quality.metadata.items()}
    assert (metadata["queries"], metadata["skipped_queries"], metadata["pages"]) == (8, 2, 8)
    assert metadata["recall_at_10"] == 1.0 and metadata["mrr_at_10"] >= 1 / 8
    assert stages.make_index(settings).count_tokens() == tokens == first.tokens == second.tokens
    hits = stages.search("replace the filter cartridge", top_k=3, settings=settings)
    assert len(hits) == 3 and {h.doc_id for h in hits} <= {
        document_key(n) for n in ("pump_maintenance_manual.pdf", "scanned_invoice.jpg", "acme_annual_report_2025.pdf")
    }
