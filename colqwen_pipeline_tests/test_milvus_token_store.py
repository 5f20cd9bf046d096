"""The token store beside the Milvus collections (schema 5): its codec, a crash between a write's
tokens and its rows, writers in two processes at once, one copy after re-ingests, dead records
that must not crowd out live ones, and the migration of a schema-4 index through the alias switch.
Real Milvus Lite files, real processes."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from colqwen_pipeline.index import token_store, two_stage
from colqwen_pipeline.index.maxsim import maxsim, pack_chunk, page_centroids, split_tokens
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline.index.milvus_schema import vector_index
from colqwen_pipeline.index.token_store import NewPage, SegmentStore, decode_tokens, encode_tokens
from colqwen_pipeline_tests.test_index import DIM, unit_pages


def lite_index(tmp_path: Path) -> MilvusIndex:
    index = MilvusIndex(str(tmp_path / "milvus.db"), "pages")
    index.exact_share = 0  # through the first stage (the scan of the store's centroids)
    return index


def live_records(index: MilvusIndex) -> int:
    with index.client() as client:
        return index._store(index.collection_info(client)).live_records()


@pytest.mark.parametrize("bits", [6, 7, 8])
def test_the_codec_round_trips_within_half_a_step_and_is_as_small_as_stated(bits: int):
    vectors = unit_pages(0, 1, tokens=50, dim=100)[0].vectors  # 100: not a multiple of 8
    payload = encode_tokens(vectors, bits)
    assert len(payload) == 50 * (104 * bits // 8 + 2)
    decoded = decode_tokens(payload, 50, 100, bits)
    step = np.abs(vectors).max(axis=1, keepdims=True) / ((1 << (bits - 1)) - 1)
    assert (np.abs(decoded - vectors) <= step * 0.5 + 1e-3 * step + 1e-6).all()


def _crash_after_tokens(uri: str) -> None:
    """A writer killed after its tokens reached the store, before any pages row was written."""
    index = MilvusIndex(uri, "pages")
    append = MilvusIndex._append_tokens

    def append_then_die(self, store, rows):
        append(self, store, rows)
        os._exit(3)

    MilvusIndex._append_tokens = append_then_die  # type: ignore[method-assign]
    index.replace_document("doc-a", "a.pdf", unit_pages(2, 3), "model-x", DIM)


def test_a_crash_between_tokens_and_rows_leaves_only_unreferenced_bytes_that_reclaim_retires(tmp_path: Path):
    index = lite_index(tmp_path)
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 3), "model-x", DIM)
    crashed = multiprocessing.get_context("spawn").Process(target=_crash_after_tokens, args=(index.uri,))
    crashed.start()
    crashed.join(120)
    assert crashed.exitcode == 3

    assert live_records(index) == 6  # the crashed write's 3 records are on disk, no row points at them
    assert index.count_tokens() == 120 and len(index.page_rows("doc-a")) == 3
    query = unit_pages(1, 3)[1].vectors[:8]
    hits = index.search([query], top_k=3)[0]
    assert sorted(h.page for h in hits) == [1, 2, 3] and hits[0].page == 2  # the old copy, once each
    assert index.reclaim(older_than_s=3600) == 0  # a writer may still be busy with young records
    assert index.reclaim(older_than_s=0) == 3 and live_records(index) == 3
    index.replace_document("doc-a", "a.pdf", unit_pages(2, 3), "model-x", DIM)
    assert live_records(index) == 3 and index.count_tokens() == 120


def test_a_failed_row_insert_retires_the_tokens_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    index = lite_index(tmp_path)
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 2), "model-x", DIM)

    def refuse(*_args, **_kwargs):
        raise RuntimeError("insert refused")

    monkeypatch.setattr("colqwen_pipeline.index.milvus.insert_rows", refuse)
    with pytest.raises(RuntimeError):
        index.replace_document("doc-b", "b.pdf", unit_pages(2, 2), "model-x", DIM)
    assert live_records(index) == 2 and index.document_ids() == {"doc-a"}


def _append_many(folder: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    store = SegmentStore(Path(folder), DIM, 4)
    start.wait()
    for batch in range(20):
        pages = unit_pages(writer * 100 + batch, 5, tokens=30)
        store.append(
            [
                NewPage(writer * 10_000 + batch * 10 + i, f"w{writer}", p.vectors, page_centroids(p.vectors, 4))
                for i, p in enumerate(pages)
            ]
        )


def test_writers_in_two_processes_append_to_one_store_without_losing_or_mixing_a_page(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_append_many, args=(str(tmp_path), w, start)) for w in (1, 2)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(300)
    assert [w.exitcode for w in writers] == [0, 0]

    store = SegmentStore(tmp_path, DIM, 4)
    assert store.live_records() == 200
    read = dict(store.read(list(range(200))))
    assert len(read) == 200  # every page uid once
    for w in (1, 2):
        for batch in range(20):
            for i, page in enumerate(unit_pages(w * 100 + batch, 5, tokens=30)):
                expected = decode_tokens(encode_tokens(page.vectors, 7), 30, DIM, 7)
                np.testing.assert_array_equal(read[w * 10_000 + batch * 10 + i], expected)


def test_reingests_leave_one_live_record_per_page_and_search_never_offers_a_retired_one(tmp_path: Path):
    index = lite_index(tmp_path)
    for doc in range(3):
        index.replace_document(f"doc-{doc}", f"{doc}.pdf", unit_pages(doc, 4), "model-x", DIM)
    for _ in range(3):
        index.replace_document("doc-1", "1.pdf", unit_pages(1, 4), "model-x", DIM)
    index.delete_document("doc-2")

    assert live_records(index) == 8 and index.token_counts_by_document() == {"doc-0": 160, "doc-1": 160}
    with index.client() as client:
        store = index._store(index.collection_info(client))
        ranked = store.scan([unit_pages(1, 4)[0].vectors[:6]], None, 100)[0]
        index._load(client, index.pages)
        uids = {row["id"] for row in client.query(index.pages, filter="id >= 0", output_fields=["id"], limit=100)}
    assert set(ranked) == uids  # the scan offers exactly the pages that have rows


def test_dead_records_do_not_crowd_out_live_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Orphan records (crashed writes) that match the query best still leave it its live pages."""
    index = lite_index(tmp_path)
    index.candidates = 4
    for doc in range(4):
        index.replace_document(f"doc-{doc}", f"{doc}.pdf", unit_pages(doc, 10), "model-x", DIM)
    target = unit_pages(3, 10)[6]
    with index.client() as client:
        store = index._store(index.collection_info(client))
    copies = [NewPage(10**9 + i, "doc-3", target.vectors, page_centroids(target.vectors, 8)) for i in range(10)]
    store.append(copies)  # ten orphans, each scored as high as the target page

    hits = index.search([target.vectors[:8]], top_k=4)[0]
    assert (hits[0].doc_id, hits[0].page) == ("doc-3", 7) and len(hits) == 4
    scoped = index.search([target.vectors[:8]], top_k=4, doc_ids=["doc-3"])[0]
    assert len(scoped) == 4 and {h.doc_id for h in scoped} == {"doc-3"}
    monkeypatch.setattr(two_stage, "RANK_DEPTH", 1)  # no reading further down: the orphans take every slot
    assert len(index.search([target.vectors[:8]], top_k=4)[0]) < 4


def _schema_4_index(index: MilvusIndex, fingerprint: str, pages_by_doc: dict[str, list]) -> None:
    """What the schema-4 code wrote: chunked fp16 rows and centroid rows, behind the alias."""
    from pymilvus import DataType

    older = copy.copy(index)
    older.schema_version = "4"
    physical = older.rebuild_target(fingerprint)  # the name schema 4 gave its collections
    properties = {"colqwen.schema": "4", "colqwen.fingerprint": fingerprint, "colqwen.dim": str(DIM)}
    with index.client() as client:
        schema = client.create_schema(auto_id=False)
        for name, kind in (("id", DataType.INT64), ("page_uid", DataType.INT64), ("chunk", DataType.INT32)):
            schema.add_field(name, kind, is_primary=name == "id")
        for name in ("n_chunks", "n_tokens", "page"):
            schema.add_field(name, DataType.INT32)
        for name in ("doc_id", "document", "page_sha256", "generation", "image", "tokens"):
            schema.add_field(name, DataType.VARCHAR, max_length=65_535, is_partition_key=name == "doc_id")
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection(physical.pages, schema=schema, index_params=vector_index(client, "FLAT", True))
        centroids = client.create_schema(auto_id=False)
        centroids.add_field("id", DataType.INT64, is_primary=True)
        centroids.add_field("doc_id", DataType.VARCHAR, max_length=512)
        centroids.add_field("generation", DataType.VARCHAR, max_length=40)
        centroids.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection(physical.collection, schema=centroids, index_params=vector_index(client, "HNSW", True))
        rows, centroid_rows = [], []
        for d, (doc_id, pages) in enumerate(pages_by_doc.items()):
            for p, page in enumerate(pages):
                uid = d * 100 + p + 1
                chunks = split_tokens(page.vectors)
                common = {"page_uid": uid, "n_chunks": len(chunks), "n_tokens": len(page.vectors), "doc_id": doc_id}
                common |= {"document": f"{doc_id}.pdf", "page": page.page, "page_sha256": page.sha256}
                common |= {"generation": "0001", "image": page.image}
                for c, chunk in enumerate(chunks):
                    row = {"id": uid << 8 | c, "chunk": c, "tokens": pack_chunk(chunk), "vector": chunk[0]}
                    rows.append(common | row)
                for k, vector in enumerate(page_centroids(page.vectors, 8)):
                    centroid_rows.append({"id": uid << 8 | k, "doc_id": doc_id, "generation": "0001", "vector": vector})
        client.insert(physical.pages, rows)
        client.insert(physical.collection, centroid_rows)
        client.alter_collection_properties(physical.pages, properties)
        client.alter_collection_properties(physical.collection, properties)
        physical._point_aliases(client, index)


def test_a_schema_4_index_is_searched_until_its_rebuild_switches_over(tmp_path: Path):
    index = MilvusIndex(str(tmp_path / "milvus.db"), "pages")
    old = {f"doc-{d}": unit_pages(d, 10, tokens=300) for d in range(2)}  # 300 tokens: 2 chunks a page
    _schema_4_index(index, "model-x", old)
    query = old["doc-1"][3].vectors[:6]
    everything = [p.vectors for pages in old.values() for p in pages]
    best = int(np.argmax(maxsim(query, everything)))

    hits = index.search([query], top_k=3)[0]  # the old rows, read by the new code
    assert (hits[0].doc_id, hits[0].page) == ("doc-1", 4) and best == 13
    assert hits[0].score == pytest.approx(float(maxsim(query, everything)[best]), rel=1e-5)  # fp16: exact
    assert index.rebuild_reason("model-x") == "index schema changed (4 -> 5)"
    target = index.rebuild_target("model-x")
    for doc_id, pages in old.items():
        target.replace_document(doc_id, f"{doc_id}.pdf", pages, "model-x", DIM)
        assert index.search([query], top_k=1)[0][0].score == hits[0].score  # still the schema-4 rows
    index.switch_to("model-x")

    assert index.rebuild_reason("model-x") is None and index.count_tokens() == 20 * 300
    now = index.search([query], top_k=3)[0]
    assert [(h.doc_id, h.page) for h in now][:1] == [("doc-1", 4)]
    assert now[0].score == pytest.approx(hits[0].score, abs=6 * index.score_error_per_token)
    assert any(index.token_dir.glob("*/records.bin"))  # read from the token store now
    with index.client() as client:
        assert len(client.list_collections()) == 4  # the schema-4 collections are kept


def test_the_scan_ranks_by_each_pages_best_centroids_across_cache_blocks_and_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The scan's fp32 slot-major copy of the centroids (blocks of ``CACHE_PAGES``, caught up after
    each append) ranks exactly as the direct computation over the mapped fp16 centroids does."""
    monkeypatch.setattr(token_store, "CACHE_PAGES", 16)
    monkeypatch.setattr(token_store, "SCAN_BYTES", 4 * 7 * 5)  # steps of 5 pages for a 7-token query
    rng = np.random.default_rng(3)
    store = SegmentStore(tmp_path / "tokens", DIM, centroids=4)
    every: list[np.ndarray] = []

    def add(count: int) -> None:
        for start in range(0, count, 7):
            pages = []
            for _ in range(min(7, count - start)):
                centroids = rng.standard_normal((int(rng.integers(1, 5)), DIM)).astype(np.float16)
                every.append(np.concatenate([centroids, np.repeat(centroids[-1:], 4 - len(centroids), 0)]))
                pages.append(NewPage(len(every), f"doc-{len(every)}", np.zeros((0, DIM)), centroids))
            store.append(pages)

    query = rng.standard_normal((7, DIM)).astype(np.float32)
    for total in (23, 40):  # a partly filled block, then more pages into it and the next ones
        add(total - len(every))
        direct = (np.stack(every).astype(np.float32) @ query.T).max(axis=1).sum(axis=1)
        expected = (np.argsort(-direct, kind="stable")[:10] + 1).tolist()
        assert store.scan([query], None, 10) == [expected]
    # The bench searches from a spawned process: a store that has scanned travels by pickle (its
    # lock and maps stay behind) and the copy ranks the same.
    assert pickle.loads(pickle.dumps(store)).scan([query], None, 10) == [expected]
