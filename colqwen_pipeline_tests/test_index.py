"""The index contract: what every backend (``index.BACKENDS``) guarantees through the public
interface (``base.DocumentIndex``) and nothing else, run on each deployment of each backend: a
Milvus Lite file and a real Milvus 2.3.5 server. Milvus internals are tested in test_milvus.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from colqwen_pipeline.index import BACKENDS, make_index
from colqwen_pipeline.index.base import DocumentIndex, DocumentRows, IndexRefused, PageRows
from colqwen_pipeline.index.bench import TOKENS, synthetic_pages, synthetic_queries
from colqwen_pipeline.index.maxsim import maxsim_uniform
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import unique_collection
from colqwen_pipeline_tests.milvus_server import free_ports

DIM = 128
# (backend, where): every backend with each place it runs; a backend added without a row fails below
DEPLOYMENTS = {"milvus-lite": ("milvus", "lite"), "milvus-server": ("milvus", "server")}


def unit_pages(seed: int, count: int, tokens: int = 40, dim: int = DIM) -> list[PageRows]:
    rng = np.random.default_rng(seed)
    pages = []
    for page in range(1, count + 1):
        vectors = rng.standard_normal((tokens, dim)).astype(np.float32)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
        pages.append(PageRows(page, f"{seed:04d}{page:060d}", vectors, f"/pages/{seed}-{page}.png"))
    return pages


def deployed_index(request: pytest.FixtureRequest, home: Path, name: str) -> DocumentIndex:
    """The index ``make_index`` builds from settings, as the pipeline gets it."""
    backend, where = DEPLOYMENTS[request.param]
    settings = {"home": home, "inbox": home, "index_backend": backend, "collection": name}
    if where == "server":
        # Strong search: these tests read what they have just written (the product's search is Bounded)
        settings |= {
            "milvus_uri": request.getfixturevalue("milvus_uri"),
            "collection": unique_collection(name),
            "index_search_consistency": "Strong",
        }
    return make_index(Settings(**settings))


@pytest.fixture(params=DEPLOYMENTS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> DocumentIndex:
    return deployed_index(request, tmp_path, "test_pages")


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def searched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DocumentIndex, np.ndarray, list[np.ndarray]]:
    """40 synthetic clustered pages of 780 tokens (31,200 token vectors) in 4 documents of 10."""
    tokens, centres = synthetic_pages(40)
    index = deployed_index(request, tmp_path_factory.mktemp("searched"), "searched")
    documents = [
        DocumentRows(
            f"doc-{doc}",
            f"doc-{doc}.pdf",
            [
                PageRows(p + 1, f"{doc}-{p}", tokens[(doc * 10 + p) * TOKENS : (doc * 10 + p + 1) * TOKENS], "")
                for p in range(10)
            ],
        )
        for doc in range(4)
    ]
    index.replace_documents(documents, "bench", DIM)
    return index, tokens, synthetic_queries(tokens, centres, 8)


def page_number(hit) -> int:
    return int(hit.doc_id.split("-")[1]) * 10 + hit.page - 1


def test_every_backend_runs_this_suite():
    assert {backend for backend, _ in DEPLOYMENTS.values()} == set(BACKENDS)


def test_reingest_leaves_one_copy(index: DocumentIndex):
    pages = unit_pages(1, 3)
    assert index.replace_document("doc-a", "a.pdf", pages, "model-x", DIM) == 120
    index.replace_document("doc-a", "a.pdf", pages, "model-x", DIM)
    assert index.token_counts_by_document() == {"doc-a": 120} and index.count_tokens("doc-a") == 120
    hits = index.search([pages[1].vectors[:8]], top_k=6)[0]
    assert sorted(h.page for h in hits) == [1, 2, 3]  # each page once
    assert hits[0].page == 2 and hits[0].score == pytest.approx(8.0, abs=8 * index.score_error_per_token)


def test_delete_document_removes_its_rows_and_only_its_rows(index: DocumentIndex):
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    index.replace_document("doc-b", "b.pdf", unit_pages(2, 1), "model-x", DIM)
    index.delete_document("doc-a")
    assert index.document_ids() == {"doc-b"} and index.token_counts_by_document() == {"doc-b": 40}
    assert {h.doc_id for h in index.search([unit_pages(1, 1)[0].vectors[:4]], top_k=5)[0]} == {"doc-b"}


def test_several_documents_in_one_write_each_get_one_copy(index: DocumentIndex):
    documents = [DocumentRows(f"doc-{i}", f"{i}.pdf", unit_pages(i, 2)) for i in range(3)]
    assert index.replace_documents(documents, "model-x", DIM) == {"doc-0": 80, "doc-1": 80, "doc-2": 80}
    index.replace_documents(documents[:2], "model-x", DIM)
    assert index.token_counts_by_document() == {"doc-0": 80, "doc-1": 80, "doc-2": 80}
    assert index.token_counts_by_document(["doc-1"]) == {"doc-1": 80}
    assert index.document_ids() == {"doc-0", "doc-1", "doc-2"}


def test_wrong_dimension_or_model_is_refused(index: DocumentIndex):
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 1), "model-x", DIM)
    with pytest.raises(IndexRefused, match="dim 128.*refusing to add model-x \\(dim 64\\)"):
        index.replace_document("doc-b", "b.pdf", unit_pages(2, 1, dim=64), "model-x", 64)
    with pytest.raises(IndexRefused, match="refusing to add model-y"):
        index.replace_document("doc-b", "b.pdf", unit_pages(2, 1), "model-y", DIM)
    with pytest.raises(IndexRefused, match="expected \\(n, 128\\)"):
        index.replace_document("doc-b", "b.pdf", unit_pages(2, 1, dim=64), "model-x", DIM)
    assert index.document_ids() == {"doc-a"}


def test_model_change_is_rebuilt_beside_the_live_index_and_switched_once(index: DocumentIndex):
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    assert index.rebuild_reason("model-x") is None
    assert index.rebuild_reason("model-y") == "model changed (model-x -> model-y)"
    rebuild = index.rebuild_target("model-y")
    rebuild.replace_document("doc-a", "a.pdf", unit_pages(5, 3), "model-y", DIM)

    old_query = unit_pages(1, 1)[0].vectors[:6]
    assert index.live_fingerprint() == "model-x" and index.count_tokens() == 80  # still the old one
    assert index.search([old_query], top_k=1)[0][0].score == pytest.approx(6.0, abs=6 * index.score_error_per_token)
    index.switch_to("model-y")

    assert index.live_fingerprint() == "model-y" and index.count_tokens() == 120
    assert index.rebuild_reason("model-y") is None
    query = unit_pages(5, 1)[0].vectors[:6]
    assert index.search([query], top_k=1)[0][0].score == pytest.approx(6.0, abs=6 * index.score_error_per_token)


def test_search_and_exact_search_agree_on_a_small_index_and_filter_by_document(index: DocumentIndex):
    for doc in range(3):
        index.replace_document(f"doc-{doc}", f"{doc}.pdf", unit_pages(doc, 10), "model-x", DIM)
    query = unit_pages(2, 4)[3].vectors[:5]
    hits = index.search([query], top_k=5)[0]
    assert hits == index.exact_search([query], top_k=5)[0]
    assert (hits[0].doc_id, hits[0].page, hits[0].document) == ("doc-2", 4, "2.pdf")
    assert {h.doc_id for h in index.search([query], top_k=5, doc_ids=["doc-1"])[0]} == {"doc-1"}
    assert index.search([], top_k=5) == []


def test_search_finds_the_brute_force_top_5_for_several_queries_in_one_call(searched):
    index, tokens, queries = searched
    results = index.search(queries, top_k=5)
    assert len(results) == len(queries)
    recall = []
    for query, hits in zip(queries, results, strict=True):
        truth = set(np.argsort(-maxsim_uniform(query, tokens, TOKENS))[:5].tolist())
        recall.append(len({page_number(h) for h in hits} & truth) / 5)
    assert np.mean(recall) >= 0.95
    assert [h.doc_id for h in index.exact_search(queries[:1], top_k=5)[0]] == [h.doc_id for h in results[0]]


def test_exact_search_scores_every_page_beyond_16384_token_vectors(searched):
    index, tokens, queries = searched
    assert index.count_tokens() == 40 * TOKENS > 16_384
    for query, ranked in zip(queries[:2], index.exact_search(queries[:2], top_k=40), strict=True):
        exact = maxsim_uniform(query, tokens, TOKENS)
        assert len(ranked) == 40 and len({page_number(h) for h in ranked}) == 40
        # scores over the stored (quantised) tokens: within the index's stated error of fp16 MaxSim
        error = len(query) * index.score_error_per_token
        np.testing.assert_allclose([h.score for h in ranked], exact[[page_number(h) for h in ranked]], atol=error)
        assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)


def test_a_path_of_1024_characters_in_three_byte_characters_is_indexed_beside_another_document(
    index: DocumentIndex,
):
    """A server's VARCHAR limit counts UTF-8 bytes: a 734-character CJK path (2,174 bytes) failed its
    document and an innocent one written with it (issue 26 item 5). The engine admits paths of up to
    1,024 characters, so the index stores 1,024 characters of any script."""
    long_path = ("资料/" + "年度报告" * 255)[: 1024 - 4] + ".pdf"
    assert len(long_path) == 1024 and len(long_path.encode()) > 3000
    documents = [
        DocumentRows("doc-long", long_path, unit_pages(1, 1)),
        DocumentRows("doc-plain", "plain.pdf", unit_pages(2, 1)),
    ]
    assert index.replace_documents(documents, "model-x", DIM) == {"doc-long": 40, "doc-plain": 40}
    assert index.document_ids() == {"doc-long", "doc-plain"}
    hit = index.search([unit_pages(1, 1)[0].vectors[:4]], top_k=1)[0][0]
    assert (hit.doc_id, hit.document) == ("doc-long", long_path)


def test_an_image_path_over_the_byte_limit_is_refused_with_one_line_before_anything_is_written(
    index: DocumentIndex,
):
    page = unit_pages(1, 1)[0]
    too_long = PageRows(1, page.sha256, page.vectors, "/state/" + "页" * 3000 + ".png")
    with pytest.raises(IndexRefused, match=r"^doc-a: page 1 image path is 9011 bytes in UTF-8, over the 8192"):
        index.replace_document("doc-a", "a.pdf", [too_long], "model-x", DIM)
    assert index.document_ids() == set()


def test_check_passes_on_a_healthy_index_and_finds_no_unreachable_rows(index: DocumentIndex):
    assert index.check() == {}
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    assert index.check() == {} and index.check(thorough=True) == {}


def test_check_of_an_unreachable_server_raises_one_line_naming_it(tmp_path: Path):
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    with pytest.raises(IndexRefused, match=f"^cannot open Milvus at {uri}: ") as refused:
        make_index(Settings(home=tmp_path, inbox=tmp_path, milvus_uri=uri)).check()
    assert "\n" not in str(refused.value)
