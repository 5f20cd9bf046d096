"""The checks' logic without Dagster, on controlled embeddings where the right answer is known:
each check passes on good data and fails on broken data. Real Milvus Lite files throughout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact, write_artifact
from colqwen_pipeline.evaluation import collection
from colqwen_pipeline.evaluation.checks import check_embeddings, check_throughput
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings

DIM = 128
TOKENS = 20
DOCUMENTS = {"alpha.pdf": 5, "beta.pdf": 4, "gamma.pdf": 3}  # 12 pages: more than fidelity's k=3


def unit_vectors(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_document(settings: Settings, name: str, pages: list[np.ndarray]) -> EmbeddingArtifact:
    records = [
        {"page": i + 1, "sha256": f"{name}-{i}", "image": f"/pages/{name}/{i + 1}.png"} for i in range(len(pages))
    ]
    return write_artifact(settings.embeddings_dir / document_key(name), pages, records, "test-model", DIM)


def corpus_settings(root: Path) -> Settings:
    return Settings(home=root / "var", inbox=root / "inbox", eval_set=root / "queries.jsonl")


@pytest.fixture(scope="module")
def corpus_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three documents in a real inbox, embeddings artifacts and a Milvus Lite collection (built once)."""
    root = tmp_path_factory.mktemp("corpus")
    settings = corpus_settings(root)
    settings.inbox.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, pages in DOCUMENTS.items():
        (settings.inbox / name).write_bytes(b"%PDF-1.7 stand-in: only its name matters here")
        write_document(settings, name, [unit_vectors(rng, TOKENS) for _ in range(pages)])
        stages.index_stage(settings, document_key(name))
    return root


@pytest.fixture
def corpus(corpus_template: Path, tmp_path: Path) -> Settings:
    """A private copy of the template (the Lite file is closed between operations, so it copies whole)."""
    shutil.copytree(corpus_template, tmp_path / "corpus")
    return corpus_settings(tmp_path / "corpus")


def page_tokens(settings: Settings, name: str, page: int) -> np.ndarray:
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / document_key(name))
    return np.asarray(artifact.page_vectors(page - 1), dtype=np.float32)


def write_eval_set(settings: Settings, answers: list[tuple[str, int]]) -> None:
    lines = [
        {"query_id": f"q{i}", "query": f"query {i}", "relevant": [{"document": name, "page": page}]}
        for i, (name, page) in enumerate(answers)
    ]
    settings.eval_set.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def embed_as(settings: Settings, pages: list[tuple[str, int]]):
    """A query embedder whose i-th query is 4 tokens copied from ``pages[i]``: that page is its
    unique best MaxSim match (score 4.0)."""
    table = {f"query {i}": page_tokens(settings, name, page)[:4] for i, (name, page) in enumerate(pages)}
    return lambda texts: [table[text] for text in texts]


ANSWERS = [("alpha.pdf", 2), ("beta.pdf", 4), ("gamma.pdf", 1), ("alpha.pdf", 5)]


# -- embedding_dimension --------------------------------------------------------------------------
def test_embedding_check_passes_on_unit_vectors_and_reports_tokens_per_page(tmp_path):
    rng = np.random.default_rng(1)
    write_artifact(tmp_path / "doc", [unit_vectors(rng, n) for n in (3, 5, 10)], fake_pages(3), "m", DIM)

    outcome = check_embeddings(tmp_path / "doc", DIM, 0.01)

    assert outcome.passed, outcome.description
    assert (outcome.metadata["tokens_per_page_min"], outcome.metadata["tokens_per_page_max"]) == (3, 10)
    assert outcome.metadata["tokens_per_page_mean"] == 6.0
    assert outcome.metadata["max_norm_error"] < 1e-3  # fp16 storage


def fake_pages(count: int) -> list[dict]:
    return [{"page": i + 1, "sha256": str(i), "image": f"{i}.png"} for i in range(count)]


def _wrong_dimension(rng):
    return [unit_vectors(rng, 4, 64)], 64


def _nan(rng):
    vectors = unit_vectors(rng, 4)
    vectors[2, 7] = np.nan
    return [vectors], DIM


def _not_normalised(rng):
    return [unit_vectors(rng, 4) * 1.5], DIM


def _empty_page(rng):
    return [unit_vectors(rng, 4), np.zeros((0, DIM), np.float32)], DIM


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_wrong_dimension, "expected 128"),
        (_nan, "1 token vectors hold NaN"),
        (_not_normalised, "norm is off 1 by 0.5"),
        (_empty_page, r"pages without tokens: \[2\]"),
    ],
)
def test_embedding_check_fails_on_broken_vectors(tmp_path, broken, message):
    pages, dim = broken(np.random.default_rng(2))
    write_artifact(tmp_path / "doc", pages, fake_pages(len(pages)), "m", dim)

    outcome = check_embeddings(tmp_path / "doc", DIM, 0.01)

    assert not outcome.passed
    assert re.search(message, outcome.description), outcome.description


def test_embedding_check_fails_without_an_artifact(tmp_path):
    outcome = check_embeddings(tmp_path / "missing", DIM, 0.01)

    assert not outcome.passed and "no embeddings artifact" in outcome.description


# -- throughput -----------------------------------------------------------------------------------
FLOORS = {"cpu": 0.5, "cuda": 5.0}


def test_throughput_passes_above_the_floor_and_reports_seconds_per_page():
    metrics = {"device": "cpu", "pages_forwarded": 4, "forward_seconds": 2.0, "batch_size": 4}
    outcome = check_throughput(metrics | {"end_to_end_pages_per_s": 0.4, "model_load_s": 3.5}, FLOORS)

    assert outcome.passed
    assert (outcome.metadata["forward_pages_per_s"], outcome.metadata["seconds_per_page"]) == (2.0, 0.5)
    assert outcome.metadata["batch_size"] == 4
    assert (outcome.metadata["end_to_end_pages_per_s"], outcome.metadata["model_load_s"]) == (0.4, 3.5)


def test_throughput_is_judged_on_forward_time_not_on_model_loading():
    """0.4 pages/s end to end (the load dominates) but 2 pages/s forward-only: above a 1 page/s floor."""
    metrics = {"device": "cpu", "pages_forwarded": 4, "forward_seconds": 2.0, "end_to_end_pages_per_s": 0.4}

    assert check_throughput(metrics | {"model_load_s": 8.0}, {"cpu": 1.0}).passed


def test_throughput_below_the_devices_floor_fails():
    metrics = {"device": "cuda:1", "pages_forwarded": 8, "forward_seconds": 4.0}  # 2 pages/s < cuda's 5

    outcome = check_throughput(metrics, FLOORS)

    assert not outcome.passed
    assert outcome.metadata["floor_pages_per_s"] == 5.0 and "BELOW the cuda floor" in outcome.description


def test_throughput_of_a_fully_cached_document_is_not_judged():
    outcome = check_throughput({"device": "cuda", "pages_forwarded": 0, "forward_seconds": 0.0}, FLOORS)

    assert outcome.passed and "cache" in outcome.description


# -- collection_consistency -----------------------------------------------------------------------
def test_consistency_passes_when_rows_match_the_artifacts(corpus):
    outcome = collection.consistency(corpus)

    assert outcome.passed, outcome.description
    assert outcome.metadata["rows"] == outcome.metadata["tokens"] == sum(DOCUMENTS.values()) * TOKENS


def test_consistency_fails_on_rows_of_a_vanished_document(corpus):
    (corpus.inbox / "beta.pdf").unlink()

    outcome = collection.consistency(corpus)

    assert not outcome.passed
    assert f"{document_key('beta.pdf')}: orphan rows" in outcome.description


def test_consistency_fails_when_the_artifact_changed_but_the_rows_did_not(corpus):
    write_document(corpus, "gamma.pdf", [unit_vectors(np.random.default_rng(5), TOKENS + 1) for _ in range(3)])

    outcome = collection.consistency(corpus)

    assert not outcome.passed
    assert f"{document_key('gamma.pdf')}: row count differs from the artifact (60 rows, 63 tokens)" in (
        outcome.description
    )


# -- retrieval_quality ----------------------------------------------------------------------------
def test_retrieval_quality_passes_when_queries_find_their_pages(corpus):
    write_eval_set(corpus, ANSWERS)

    outcome = collection.retrieval_quality(corpus, embed=embed_as(corpus, ANSWERS))

    assert outcome.passed, outcome.description
    assert outcome.metadata["ndcg_at_5"] == outcome.metadata["mrr_at_10"] == 1.0
    assert outcome.metadata["chance_recall_at_1"] == pytest.approx(1 / 12, abs=1e-4)
    assert [row["top_hit"] for row in outcome.tables["per_query"]] == [f"{n} p{p}" for n, p in ANSWERS]


def test_retrieval_quality_fails_when_queries_land_on_other_pages(corpus):
    write_eval_set(corpus, ANSWERS)
    wrong = [("gamma.pdf", 3)] * len(ANSWERS)  # every query embeds like another page

    outcome = collection.retrieval_quality(corpus, embed=embed_as(corpus, wrong))

    assert not outcome.passed
    assert outcome.metadata["recall_at_1"] == 0.0
    assert "nDCG@5" in outcome.description


def test_retrieval_quality_skips_queries_whose_documents_are_not_indexed(corpus):
    write_eval_set(corpus, [*ANSWERS, ("not_ingested.pdf", 1)])

    outcome = collection.retrieval_quality(corpus, embed=embed_as(corpus, ANSWERS))

    assert outcome.passed
    assert outcome.metadata["skipped_queries"] == 1 and "q4" in outcome.description


def test_retrieval_quality_fails_with_a_clear_reason_without_an_eval_set(corpus):
    outcome = collection.retrieval_quality(corpus, embed=embed_as(corpus, []))

    assert not outcome.passed and "evaluation set not found" in outcome.description


# -- index_fidelity -------------------------------------------------------------------------------
def test_index_fidelity_passes_when_the_collection_matches_exact_maxsim(corpus):
    write_eval_set(corpus, ANSWERS)
    settings = corpus.model_copy(update={"fidelity_k": 3})

    outcome = collection.fidelity(settings, embed=random_queries(len(ANSWERS)))

    assert outcome.passed, outcome.description
    assert outcome.metadata["recall_at_k"] == 1.0 and outcome.metadata["pages"] == 12


def test_index_fidelity_fails_when_the_collection_is_stale(corpus):
    write_eval_set(corpus, ANSWERS)
    rng = np.random.default_rng(9)
    for name, pages in DOCUMENTS.items():  # new embeddings on disk, old rows in Milvus
        write_document(corpus, name, [unit_vectors(rng, TOKENS) for _ in range(pages)])
    settings = corpus.model_copy(update={"fidelity_k": 3})

    outcome = collection.fidelity(settings, embed=random_queries(len(ANSWERS)))

    assert not outcome.passed
    assert outcome.metadata["recall_at_k"] < 0.99


def random_queries(count: int):
    rng = np.random.default_rng(11)
    table = {f"query {i}": unit_vectors(rng, 6) for i in range(count)}
    return lambda texts: [table[text] for text in texts]
