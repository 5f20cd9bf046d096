"""One query encoder: `evaluate` (and the checks built on it) and `search` give a query the same
score for the same page, through the same cache key (issue 19, item 1: evaluate skipped both the
cache and the fp16 rounding, so its scores differed from what users saw)."""

from __future__ import annotations

import json

import pytest

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.bulk.engine import run_documents
from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.registry import model_identity
from colqwen_pipeline.evaluation.collection import evaluate
from colqwen_pipeline.inbox import inbox_files
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import add_sample

QUERY = "replace the filter cartridge"


def test_evaluate_and_search_score_a_query_identically(state: Settings, tmp_path, monkeypatch, redis_url: str):
    monkeypatch.setenv("COLQWEN_REDIS_URL", redis_url)
    add_sample(state, "pump_maintenance_manual.pdf")
    eval_set = tmp_path / "queries.jsonl"
    relevant = [{"document": "pump_maintenance_manual.pdf", "page": 2}]
    eval_set.write_text(json.dumps({"query_id": "q1", "query": QUERY, "relevant": relevant}) + "\n")
    monkeypatch.setenv("COLQWEN_EVAL_SET", str(eval_set))
    settings = Settings()
    assert not run_documents(settings, sorted(inbox_files(settings.inbox))).failed

    evaluated = {(h.doc_id, h.page): h.score for h in evaluate(settings).results[0].hits}
    searched = {(h.doc_id, h.page): h.score for h in stages.search(QUERY, top_k=3, settings=settings)}

    assert len(searched) == 3
    for page, score in searched.items():
        assert evaluated[page] == pytest.approx(score, rel=1e-6, abs=1e-6)
    cache = EmbeddingCache(redis_url, model_identity(settings).fingerprint, 128)
    assert cache.get_many([cache.text_key(QUERY)])[0] is not None  # evaluate stored what search reads
