"""Two writers of one document on a Milvus server (which has no file lock: the sensor and the
nightly reindex can write the same document at once) converge on one copy (issue 20, item 11).
The interleavings are driven step by step through the index's own write phases; a last test runs
two real threads against the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from colqwen_pipeline.index.base import DocumentRows
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline_tests.conftest import run_in_threads, unique_collection
from colqwen_pipeline_tests.test_index import DIM, unit_pages
from colqwen_pipeline_tests.test_milvus import BACKENDS, make_test_index


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> MilvusIndex:
    return make_test_index(request, tmp_path, "test_pages")


def _write_in_steps(index: MilvusIndex, doc: DocumentRows):
    """A writer paused between its phases: pages, centroids, settle."""
    rows = index._new_rows([doc], DIM)
    with index.client() as client:
        store = index._prepare(client, "model-x", DIM)
        index._write_pages(client, store, rows)
        yield "pages"
        index._write_centroids(client, store, rows, DIM)
        yield "centroids"
        index._settle(client, store, doc.doc_id, rows.generation)
    yield "settled"


def _one_copy(index: MilvusIndex, doc_id: str, pages: int) -> None:
    rows = index.page_rows(doc_id)
    assert len({r["generation"] for r in rows}) == 1 and len(rows) == pages
    assert index.count_tokens(doc_id) == 40 * pages
    assert index.check(thorough=True) == {}
    assert live_records(index) == pages  # the store retired every superseded page's tokens
    hits = index.exact_search([unit_pages(1, pages)[0].vectors[:4]], top_k=pages)[0]
    assert sorted(h.page for h in hits) == list(range(1, pages + 1))


# Each interleaving names the steps in order: which writer (a started first, so b is newer) moves.
INTERLEAVINGS = {
    "both pages, then both centroids": "abab" + "ab",
    "a pages, b all, a rest": "a" + "bbb" + "aa",
    "b all, then a all": "bbb" + "aaa",
    "a centroids after b settled": "ab" + "bb" + "aa",
}


@pytest.mark.parametrize("order", INTERLEAVINGS.values(), ids=INTERLEAVINGS.keys())
def test_interleaved_writers_of_one_document_leave_one_copy(index: MilvusIndex, order: str):
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 3), "model-x", DIM)  # what is indexed before
    writers = {
        "a": _write_in_steps(index, DocumentRows("doc-a", "a.pdf", unit_pages(1, 3))),
        "b": _write_in_steps(index, DocumentRows("doc-a", "a.pdf", unit_pages(1, 3))),
    }
    for name in order:
        next(writers[name])
    _one_copy(index, "doc-a", 3)
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 3), "model-x", DIM)  # a later write: one copy still
    _one_copy(index, "doc-a", 3)


def live_records(index: MilvusIndex) -> int:
    with index.client() as client:
        return index._store(index.collection_info(client)).live_records()


def test_orphan_centroid_rows_are_reported_and_removed_by_the_next_write(milvus_uri: str, tmp_path: Path):
    """A server's first stage searches centroid rows in Milvus (Lite scans the token store's)."""
    index = MilvusIndex(milvus_uri, unique_collection("orphans"), search_consistency="Strong", token_dir=tmp_path)
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    rows = index._new_rows([DocumentRows("doc-a", "a.pdf", unit_pages(1, 2))], DIM)
    with index.client() as client:
        store = index._prepare(client, "model-x", DIM)
        index._write_centroids(client, store, rows, DIM)  # a crashed writer's centroids without pages
    assert index.check(thorough=True) == {"doc-a": 2 * index.centroids_per_page}

    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    _one_copy(index, "doc-a", 2)


def test_two_threads_rewriting_one_document_on_a_server_converge(milvus_uri: str, tmp_path: Path):
    index = MilvusIndex(milvus_uri, unique_collection("race"), search_consistency="Strong", token_dir=tmp_path)
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)

    def rewrite() -> None:
        for _ in range(4):
            MilvusIndex(milvus_uri, index.collection, token_dir=tmp_path).replace_document(
                "doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM
            )

    errors = run_in_threads(rewrite, count=2, timeout_s=600)
    assert errors == []
    _one_copy(index, "doc-a", 2)
