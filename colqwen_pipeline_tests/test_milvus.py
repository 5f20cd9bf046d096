"""Milvus-specific behaviour below the index interface, on real Milvus Lite files and a real Milvus
2.3.5 server: the packed token rows, partitions, a crash between a write's phases, damaged rows,
the forced first stage (recall against brute force beyond the 16384-row query cap, bounded
fetches), Lite's file lock, and the search benchmark. The interface's contract is test_index.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from colqwen_pipeline.index import first_stage, maxsim, two_stage
from colqwen_pipeline.index.base import IndexRefused, PageRows
from colqwen_pipeline.index.bench import TOKENS, bench_search, synthetic_pages, synthetic_queries
from colqwen_pipeline.index.maxsim import maxsim_uniform, pack_chunk, split_tokens, unpack_tokens
from colqwen_pipeline.index.milvus import MilvusIndex, _StoreRows
from colqwen_pipeline_tests.conftest import unique_collection
from colqwen_pipeline_tests.test_index import DIM, unit_pages

BACKENDS = ["lite", "server"]  # Milvus Lite files, and a real Milvus 2.3.5 standalone server


def make_test_index(request: pytest.FixtureRequest, directory: Path, name: str) -> MilvusIndex:
    if request.param == "lite":
        return MilvusIndex(str(directory / "milvus.db"), name)
    # Strong search: these tests read what they have just written (the product's search is Bounded)
    uri = request.getfixturevalue("milvus_uri")
    return MilvusIndex(uri, unique_collection(name), search_consistency="Strong", token_dir=directory / "tokens")


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> MilvusIndex:
    return make_test_index(request, tmp_path, "test_pages")


def test_packed_tokens_round_trip_exactly_in_varchar_sized_chunks():
    vectors = unit_pages(0, 1, tokens=500)[0].vectors
    chunks = [pack_chunk(chunk) for chunk in split_tokens(vectors)]  # as the pages rows store them
    assert len(chunks) == 3 and all(len(c) <= 65_535 for c in chunks)
    np.testing.assert_array_equal(unpack_tokens(chunks, DIM), vectors)


def test_crash_between_writing_and_deleting_converges_on_rerun(index: MilvusIndex, monkeypatch: pytest.MonkeyPatch):
    old, new = unit_pages(1, 2), unit_pages(3, 2)
    index.replace_document("doc-a", "a.pdf", old, "model-x", DIM)

    def crash(*_args, **_kwargs):
        raise RuntimeError("simulated crash after the new generation was written")

    monkeypatch.setattr(MilvusIndex, "_settle", crash)
    with pytest.raises(RuntimeError):
        index.replace_document("doc-a", "a.pdf", new, "model-x", DIM)
    assert index.count_tokens("doc-a") == 160  # both generations are on disk
    hits = index.search([new[0].vectors[:8]], top_k=4)[0]
    assert sorted(h.page for h in hits) == [1, 2]  # but search shows each page once, newest generation
    assert hits[0].page == 1 and hits[0].score == pytest.approx(8.0, abs=1e-3)
    monkeypatch.setattr(two_stage, "FETCH_PAGES", 1)  # generations of a page fetched in different groups
    assert [(h.page, h.score) for h in index.exact_search([new[0].vectors[:8]], top_k=4)[0]] == [
        (h.page, h.score) for h in hits
    ]
    monkeypatch.undo()
    index.replace_document("doc-a", "a.pdf", new, "model-x", DIM)
    assert index.count_tokens("doc-a") == 80 and len({r["generation"] for r in index.page_rows("doc-a")}) == 1


def test_collection_of_another_schema_is_refused_not_dropped(index: MilvusIndex):
    with index.client() as client:
        client.create_collection(index.collection, dimension=DIM)  # someone else's collection, same name
    with pytest.raises(IndexRefused, match="is a collection, not an alias|not created by colqwen-pipeline"):
        index.replace_document("doc-a", "a.pdf", unit_pages(1, 1), "model-x", DIM)
    with index.client() as client:
        assert client.has_collection(index.collection)


def test_pages_are_partitioned_by_document_and_centroids_are_not(index: MilvusIndex):
    """Partitions keep each of Lite's segment merges far below Arrow's 2 GB string limit (one
    partition overflowed at ~7,500 pages); the searched centroids stay in one partition (fast)."""
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    physical = index.rebuild_target("model-x")
    with index.client() as client:
        doc_id = next(f for f in client.describe_collection(physical.pages)["fields"] if f["name"] == "doc_id")
        assert doc_id["is_partition_key"]
        partitions = client.list_partitions(physical.pages)
        assert len([p for p in partitions if p != "_default"]) == 16, partitions  # Lite: _pk_N, server: _default_N
        assert client.list_partitions(physical.collection) == ["_default"]


def test_a_row_whose_token_record_holds_another_page_raises_instead_of_scoring_wrong(index: MilvusIndex):
    pages = unit_pages(1, 2)
    index.replace_document("doc-a", "a.pdf", pages, "model-x", DIM)
    with index.client() as client:
        client.load_collection(index.pages)
        rows = client.query(index.pages, filter="page == 2", output_fields=["*"], limit=1)
        other = client.query(index.pages, filter="page == 1", output_fields=["record"], limit=1)[0]["record"]
        client.upsert(index.pages, [rows[0] | {"record": other}])  # page 2's row, page 1's tokens
    with pytest.raises(IndexRefused, match=r"^doc-a page 2: token store record \d+ holds 40 tokens of page \d+"):
        index.exact_search([pages[0].vectors[:4]])


@pytest.fixture(scope="module", params=BACKENDS)
def bench_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MilvusIndex, np.ndarray, list[np.ndarray]]:
    """40 synthetic clustered pages of 780 tokens (31,200 token rows) in 4 documents of 10."""
    tokens, centres = synthetic_pages(40)
    index = make_test_index(request, tmp_path_factory.mktemp("bench"), "bench")
    index.exact_share = 0  # always through the first stage: these tests are about it
    with index.session():
        for doc in range(4):
            pages = [
                PageRows(
                    p + 1, f"{doc}-{p}", tokens[(doc * 10 + p) * TOKENS : (doc * 10 + p + 1) * TOKENS], f"page-{p}.png"
                )
                for p in range(10)
            ]
            index.replace_document(f"doc-{doc}", f"doc-{doc}.pdf", pages, "bench", DIM)
    return index, tokens, synthetic_queries(tokens, centres, 8)


def test_candidates_beyond_16384_token_rows_are_scored_exactly(bench_index):
    index, tokens, queries = bench_index
    assert index.count_tokens() == 40 * TOKENS > 16_384
    hits = index.search(queries[:2], top_k=40, candidates=40)
    for query, ranked in zip(queries[:2], hits, strict=True):
        exact = maxsim_uniform(query, tokens, TOKENS)
        order = [int(h.doc_id.split("-")[1]) * 10 + h.page - 1 for h in ranked]
        assert len(order) == 40
        assert len(set(order)) == 40
        error = len(query) * index.score_error_per_token  # scored over the stored 7-bit tokens
        np.testing.assert_allclose([h.score for h in ranked], exact[order], atol=error)


def test_recall_at_5_against_brute_force_and_several_queries_in_one_call(bench_index):
    index, tokens, queries = bench_index
    results = index.search(queries, top_k=5)
    assert len(results) == len(queries)
    recall = []
    for query, hits in zip(queries, results, strict=True):
        truth = set(np.argsort(-maxsim_uniform(query, tokens, TOKENS))[:5].tolist())
        recall.append(len({int(h.doc_id.split("-")[1]) * 10 + h.page - 1 for h in hits} & truth) / 5)
    assert np.mean(recall) >= 0.95
    assert [h.doc_id for h in index.exact_search(queries[:1], top_k=5)[0]] == [h.doc_id for h in results[0]]


def same_hits(got: list[list[Any]], expected: list[list[Any]]) -> bool:
    """The same pages in the same order, scores equal up to float summation order (BLAS may add
    a batch's products in another order than one query's)."""
    pages = [[(h.doc_id, h.page) for h in hits] for hits in got] == [
        [(h.doc_id, h.page) for h in hits] for hits in expected
    ]
    scores = [h.score for hits in got for h in hits] == pytest.approx(
        [h.score for hits in expected for h in hits], rel=1e-5
    )
    return pages and scores


def test_many_queries_and_pages_are_fetched_in_bounded_groups_with_the_same_results(bench_index, monkeypatch):
    """One reply must stay under gRPC's 256 MB cap (a 50-query batch at 10,000 pages asked for
    401 MB): candidates are fetched a bounded number of pages at a time."""
    index, _, queries = bench_index
    searched, exact = index.search(queries, top_k=5, candidates=8), index.exact_search(queries[:3], top_k=5)
    fetched: list[int] = []
    fetch = _StoreRows.fetch
    monkeypatch.setattr(_StoreRows, "fetch", lambda self, uids: fetched.append(len(uids)) or fetch(self, uids))
    monkeypatch.setattr(two_stage, "FETCH_PAGES", 8)
    monkeypatch.setattr("colqwen_pipeline.index.milvus.MAX_GET_IDS", 16)
    assert same_hits(index.search(queries, top_k=5, candidates=8), searched)
    assert len(fetched) == len(queries) and max(fetched) <= 8
    fetched.clear()
    assert same_hits(index.exact_search(queries[:3], top_k=5), exact)
    assert len(fetched) == 5 and max(fetched) <= 8  # 40 pages, 8 at a time


def test_filter_by_document(bench_index):
    index, _, queries = bench_index
    hits = index.search(queries[:3], top_k=5, doc_ids=["doc-2"])
    assert all(h.doc_id == "doc-2" for per_query in hits for h in per_query)
    assert all(len(per_query) == 5 for per_query in hits)


def test_lite_file_is_released_after_each_operation(tmp_path: Path):
    index = MilvusIndex(str(tmp_path / "milvus.db"), "test_pages")
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 1), "model-x", DIM)
    code = (
        "import sys; from colqwen_pipeline.index.milvus import MilvusIndex;"
        f"print(MilvusIndex({index.uri!r}, {index.collection!r}, lock_wait_s=0).count_tokens())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.stdout.strip() == "40", other.stderr[-500:]


def test_bench_reports_every_field_on_a_tiny_run():
    result = bench_search(pages=20, queries=3, layra_queries=1)
    assert result["pages"] == 20 and result["bytes_per_page_disk"] > 0 and result["ours"]["ingest_rows_per_s"] > 0
    assert result["recall_at_5"] == 1.0  # 20 pages are scored exactly (step 0 in docs/search.md)
    assert result["layra_baseline"]["recall_at_5"] > 0
    assert set(result["layra_baseline"]) >= {"p50_ms", "recall_at_5"} and result["brute_force_p50_ms"] > 0


def test_bench_measures_a_milvus_server_the_same_way_and_drops_what_it_made(milvus_uri: str):
    from pymilvus import MilvusClient

    before = set(MilvusClient(uri=milvus_uri).list_collections())
    result = bench_search(pages=20, queries=3, layra_queries=1, uri=milvus_uri)

    assert result["milvus"] == f"server {milvus_uri}" and result["bytes_per_page_disk"] is None
    assert result["recall_at_5"] == 1.0 and result["layra_baseline"]["recall_at_5"] > 0
    assert set(MilvusClient(uri=milvus_uri).list_collections()) == before


def test_a_small_collection_is_scored_exactly_whatever_the_first_stage_would_miss(index: MilvusIndex, monkeypatch):
    """With 20 candidates, up to 120 pages are scored exactly: the first stage is never consulted."""
    for doc in range(3):
        index.replace_document(f"doc-{doc}", f"{doc}.pdf", unit_pages(doc, 10), "model-x", DIM)
    with index.client() as client:  # a server's row statistics count flushed segments only
        client.flush(index.collection)
    for stage in (first_stage.MilvusCentroids, first_stage.ScannedCentroids):
        monkeypatch.setattr(stage, "ranked", lambda *_: pytest.fail("first stage used"))
    query = unit_pages(2, 4)[3].vectors[:5]

    hits = index.search([query], top_k=5)[0]

    assert hits == index.exact_search([query], top_k=5)[0]
    assert (hits[0].doc_id, hits[0].page) == ("doc-2", 4)


def test_packed_bytes_counts_what_a_chunk_decodes_to_without_decoding_it():
    import base64

    for tokens, dim in ((1, 128), (2, 128), (191, 128), (3, 3), (7, 5)):
        chunk = maxsim.pack_chunk(np.ones((tokens, dim)))
        assert maxsim.packed_bytes(chunk) == len(base64.b64decode(chunk)) == 2 * tokens * dim


def test_a_truncated_token_segment_raises_instead_of_scoring_wrong(index: MilvusIndex):
    pages = unit_pages(3, 2)
    index.replace_document("doc-a", "a.pdf", pages, "model-x", DIM)
    (segment,) = index.token_dir.glob("*/seg-*.tok")
    os.truncate(segment, segment.stat().st_size - 100)
    with pytest.raises(IndexRefused, match=r"token store .*: record 1 runs past its segment"):
        index.exact_search([pages[0].vectors[:4]])


def test_unknown_peer_is_refused_with_one_line():
    from colqwen_pipeline.index.peers import parse_peers

    assert parse_peers(" lancedb, qdrant-local ,") == ["lancedb", "qdrant-local"]
    with pytest.raises(ValueError, match=r"^unknown peer 'vespa': choose from fast-plaid, lancedb, qdrant-local$"):
        parse_peers("lancedb,vespa")


def test_bench_times_the_peers_on_the_same_pages_and_says_why_one_is_skipped():
    """Real LanceDB and qdrant-client local mode (the optional `.[bench]` extra) on 20 pages: both see
    every page (LanceDB flat below 256 pages, Qdrant's prefetch of 100 covers all 20), so both are exact."""
    pytest.importorskip("lancedb")
    pytest.importorskip("qdrant_client")

    result = bench_search(pages=20, queries=3, layra_queries=0, peers=["lancedb", "qdrant-local", "fast-plaid"])

    assert result["queries"] == 3 and set(result["peers"]) == {"lancedb", "qdrant-local", "fast-plaid"}
    for name in ("lancedb", "qdrant-local"):
        peer = result["peers"][name]
        assert set(peer) == {"p50_ms", "p95_ms", "recall_at_5", "ingest_s", "disk_mb"}
        assert peer["recall_at_5"] == 1.0 and peer["disk_mb"] > 0 and peer["p50_ms"] > 0
    assert "torch" in result["peers"]["fast-plaid"]["skipped"]


def test_bench_with_token_pooling_stores_a_third_of_the_vectors():
    result = bench_search(pages=20, queries=3, layra_queries=0, token_pooling=3)
    plain = bench_search(pages=20, queries=3, layra_queries=0)

    assert result["ours"]["vectors_per_page"] == TOKENS // 3 and plain["ours"]["vectors_per_page"] == TOKENS
    assert result["bytes_per_page_disk"] < 0.5 * plain["bytes_per_page_disk"]
    assert result["recall_at_5"] >= 0.6  # pooled vectors, truth over the unpooled tokens


def test_a_peer_without_its_package_is_refused_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from colqwen_pipeline.common.errors import PipelineError
    from colqwen_pipeline.index.peers import LanceDBPeer

    monkeypatch.setitem(sys.modules, "lancedb", None)  # what an install without the bench extra sees
    with pytest.raises(PipelineError, match=r"^peer 'lancedb' needs pip install '\.\[bench\]'"):
        LanceDBPeer(tmp_path)


def test_a_switch_keeps_the_previous_collections(index: MilvusIndex):
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)
    index.rebuild_target("model-y").replace_document("doc-a", "a.pdf", unit_pages(5, 3), "model-y", DIM)
    index.switch_to("model-y")
    with index.client() as client:  # never dropped implicitly
        assert index.rebuild_target("model-x").collection_info(client)["fingerprint"] == "model-x"
