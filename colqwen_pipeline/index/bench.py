"""``colqwen-pipeline bench search``: our search vs a LAYRA-style baseline, brute force and embedded
peers (``--peers lancedb,qdrant-local``), one run.

Synthetic clustered pages (780 unit-norm 128-d tokens, fp16-representable like the embedding
artifacts) drawn around a few topics per page out of a shared pool, and 25-token queries drawn
near a target page's tokens and topics (not copies), so other pages compete. Ground truth is exact
brute-force MaxSim over all pages held in RAM as fp32 numpy (its best case).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.index.base import PageRows
from colqwen_pipeline.index.maxsim import maxsim, maxsim_uniform
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline.index.peers import PEERS, UNAVAILABLE, Peer
from colqwen_pipeline.index.pooling import token_pooler

TOKENS, DIM, QUERY_TOKENS, TOPICS_PER_PAGE, PAGES_PER_DOC = 780, 128, 25, 8, 10
LAYRA = "layra_tokens"


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def synthetic_pages(pages: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pages*780, 128) fp32 tokens and the (pages, 8, 128) page-topic centres they were drawn around.

    A document's pages share 4 of its 6 topics (from a common pool), each page adds 4 of its own:
    relevance is graded (same topic, same document) rather than all-or-nothing."""
    rng = np.random.default_rng(seed)
    pool = _unit(rng.standard_normal((max(64, pages // 8), DIM), dtype=np.float32))
    centres = np.empty((pages, TOPICS_PER_PAGE, DIM), dtype=np.float32)
    for first in range(0, pages, PAGES_PER_DOC):
        doc_topics = _unit(pool[rng.choice(len(pool), 6, replace=False)] + 0.5 * _unit(rng.standard_normal((6, DIM))))
        for p in range(first, min(pages, first + PAGES_PER_DOC)):
            shared = doc_topics[rng.choice(6, 4, replace=False)]
            own = _unit(rng.standard_normal((TOPICS_PER_PAGE - 4, DIM), dtype=np.float32))
            centres[p] = _unit(np.concatenate([shared, own]) + 0.3 * _unit(rng.standard_normal((TOPICS_PER_PAGE, DIM))))
    tokens = np.empty((pages * TOKENS, DIM), dtype=np.float32)
    for p in range(pages):
        assign = rng.integers(0, TOPICS_PER_PAGE, TOKENS)
        noise = rng.standard_normal((TOKENS, DIM), dtype=np.float32) / np.sqrt(DIM)
        tokens[p * TOKENS : (p + 1) * TOKENS] = _unit(centres[p, assign] + 0.7 * noise)
    return tokens.astype(np.float16).astype(np.float32), centres  # exactly what fp16 storage holds


def synthetic_queries(tokens: np.ndarray, centres: np.ndarray, count: int, seed: int = 1) -> list[np.ndarray]:
    """Each query: 15 tokens near random tokens of a target page, 10 near its topics (looser)."""
    rng = np.random.default_rng(seed)
    queries = []
    for target in rng.integers(0, len(centres), count):
        near_tokens = tokens[target * TOKENS + rng.integers(0, TOKENS, 15)]
        near_topics = centres[target, rng.integers(0, TOPICS_PER_PAGE, QUERY_TOKENS - 15)]
        noise = rng.standard_normal((QUERY_TOKENS, DIM), dtype=np.float32) / np.sqrt(DIM)
        base = np.concatenate([near_tokens, near_topics])
        queries.append(_unit(base + np.where(np.arange(QUERY_TOKENS)[:, None] < 15, 0.5, 0.8) * noise))
    return queries


def _ms(seconds: list[float], q: float) -> float | None:
    if not seconds:  # e.g. the LAYRA baseline skipped at 10,000 pages (minutes per query)
        return None
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 1)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _ingest(index: MilvusIndex, page_vectors: Sequence[np.ndarray]) -> float:
    started = time.perf_counter()
    pages = len(page_vectors)
    with index.session():
        for first in range(0, pages, PAGES_PER_DOC):
            rows = [
                PageRows(p - first + 1, f"{p:064x}", page_vectors[p], f"page-{p}.png")
                for p in range(first, min(pages, first + PAGES_PER_DOC))
            ]
            doc = first // PAGES_PER_DOC
            index.replace_document(f"doc-{doc}", f"doc-{doc}.pdf", rows, "bench", DIM)
    return time.perf_counter() - started


def _page_number(hit: Any) -> int:
    return int(hit.doc_id.split("-")[1]) * PAGES_PER_DOC + hit.page - 1


def _layra_collection(client: Any, tokens: np.ndarray, name: str = LAYRA) -> None:
    """The baseline's own store, as LAYRA keeps it: one row per token vector, FLAT index. Built
    after our measurements and not counted in our ingest or bytes."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("page", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    for start in range(0, len(tokens), 16_384):
        rows = tokens[start : start + 16_384]
        client.insert(name, [{"page": (start + i) // TOKENS, "vector": v} for i, v in enumerate(rows)])
    client.flush(name)
    client.load_collection(name)


def _layra_search(client: Any, query: np.ndarray, name: str = LAYRA) -> list[int]:
    """LAYRA: ANN per query token (limit 50), then one query per candidate page, then MaxSim."""
    hits = client.search(
        name, data=query.tolist(), limit=50, output_fields=["page"], search_params={"metric_type": "IP"}
    )
    pages = sorted({h["entity"]["page"] for per_token in hits for h in per_token})
    vectors = []
    for page in pages:
        rows = client.query(name, filter=f"page == {page}", output_fields=["vector"], limit=16384)
        vectors.append(np.asarray([r["vector"] for r in rows], dtype=np.float32))
    scores = maxsim(query, vectors)
    return [pages[i] for i in np.argsort(-scores)[:5]]


LAYRA_MAX_PAGES = 2000  # above it the baseline (780 token rows per page) takes minutes per query


class _PeerRun:
    """One peer's ingest, disk and per-query timings within the bench."""

    def __init__(self, peer: Peer, tokens: np.ndarray):
        self.peer, self.seconds, self.recall = peer, [], []
        started = time.perf_counter()
        peer.ingest([tokens[p * TOKENS : (p + 1) * TOKENS] for p in range(len(tokens) // TOKENS)])
        self.ingest_s = time.perf_counter() - started

    def query(self, query: np.ndarray, truth: set[int]) -> None:
        started = time.perf_counter()
        top = self.peer.search(query, 5)
        self.seconds.append(time.perf_counter() - started)
        self.recall.append(len(set(top) & truth) / 5)

    def summary(self) -> dict:
        return {
            "p50_ms": _ms(self.seconds, 50),
            "p95_ms": _ms(self.seconds, 95),
            "recall_at_5": round(float(np.mean(self.recall)), 4),
            "ingest_s": round(self.ingest_s, 2),
            "disk_mb": round(self.peer.disk_bytes() / 1e6, 1),
        }


def _start_peers(names: Sequence[str], root: Path, tokens: np.ndarray) -> dict[str, _PeerRun]:
    runs = {}
    for name in names:
        if name in PEERS:
            folder = root / f"peer-{name}"
            folder.mkdir()
            runs[name] = _PeerRun(PEERS[name](folder), tokens)
    return runs


def bench_search(
    pages: int = 1000,
    queries: int = 50,
    layra_queries: int | None = None,
    workdir: str | None = None,
    uri: str | None = None,
    peers: Sequence[str] = (),
    token_pooling: int = 0,
) -> dict:
    """One run: ingest, then our search and brute force timed query by query (interleaved, so both
    see the same machine load), then the LAYRA-style baseline on its own token-row collection.

    ``uri``: a Milvus server (``http://host:19530``) instead of a temporary Lite file; the bench
    writes collections of its own there (``bench_<random>``) and drops them at the end.

    ``peers``: names from ``peers.PEERS`` (``lancedb``, ``qdrant-local``), each ingesting the same pages
    after ours (not counted in our figures) and timed on every query right after ours.

    ``token_pooling``: our index stores the pages pooled by this factor (``index.pooling``); the truth
    stays exact MaxSim over the unpooled tokens, so recall says what pooling costs."""
    if layra_queries is None:
        layra_queries = 5 if pages <= LAYRA_MAX_PAGES else 0
    root = Path(workdir or tempfile.mkdtemp(prefix="colqwen-bench-"))
    db = root / "milvus.db"
    name = f"bench_{secrets.token_hex(4)}" if uri else "bench"
    index = MilvusIndex(uri or str(db), name)
    layra = f"{name}_{LAYRA}"
    peer_runs: dict[str, _PeerRun] = {}
    try:
        tokens, centres = synthetic_pages(pages)
        query_set = synthetic_queries(tokens, centres, queries)
        page_vectors = [tokens[p * TOKENS : (p + 1) * TOKENS] for p in range(pages)]
        pool_started = time.perf_counter()
        page_vectors = token_pooler(token_pooling).pool(page_vectors)
        pool_s = time.perf_counter() - pool_started
        stored_vectors = sum(len(v) for v in page_vectors)
        ingest_s = _ingest(index, page_vectors)
        bytes_per_page = None if uri else round(_disk_bytes(db) / pages)  # a server's disk is not ours to read
        peer_runs = _start_peers(peers, root, tokens)

        truth, brute_s, ours_s, recall = [], [], [], []
        open_started = time.perf_counter()
        with index.session():
            index.search(query_set[:1], top_k=5)  # opens the file and loads the pages collection
            first_query_s = time.perf_counter() - open_started
            for query in query_set:  # interleaved, so both sides see the same machine load
                started = time.perf_counter()
                scores = maxsim_uniform(query, tokens, TOKENS)
                truth.append(set(np.argsort(-scores)[:5].tolist()))
                brute_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                hits = index.search([query], top_k=5)[0]
                ours_s.append(time.perf_counter() - started)
                recall.append(len({_page_number(h) for h in hits} & truth[-1]) / 5)
                for run in peer_runs.values():
                    run.query(query, truth[-1])
            batch_started = time.perf_counter()
            index.search(query_set, top_k=5)
            batch_s = time.perf_counter() - batch_started

            layra_s, layra_recall = [], []
            with index.client() as client:
                if layra_queries:
                    _layra_collection(client, tokens, layra)
                for query, expected in list(zip(query_set, truth, strict=True))[:layra_queries]:
                    started = time.perf_counter()
                    top = _layra_search(client, query, layra)
                    layra_s.append(time.perf_counter() - started)
                    layra_recall.append(len(set(top) & expected) / 5)
        return {
            "pages": pages,
            "queries": len(query_set),
            "milvus": "server " + uri if uri else "lite",
            "ours": {
                "p50_ms": _ms(ours_s, 50),
                "p95_ms": _ms(ours_s, 95),
                "recall_at_5": round(float(np.mean(recall)), 4),
                "bytes_per_page": bytes_per_page,
                "ingest_rows_per_s": round(stored_vectors / ingest_s),
                "vectors_per_page": round(stored_vectors / pages, 1),
                "token_pooling": token_pooling,
                "pooling_s_per_page": round(pool_s / pages, 4),
                "open_and_first_query_ms": round(first_query_s * 1000, 1),
                "batch_of_queries_ms_per_query": round(batch_s * 1000 / len(query_set), 1),
                "candidates": index.candidates,
                "hits_per_token": index.hits_per_token,
                "centroids_per_page": index.centroids_per_page,
            },
            "layra_baseline": {
                "p50_ms": _ms(layra_s, 50),
                "recall_at_5": round(float(np.mean(layra_recall)), 4) if layra_recall else None,
                "queries": len(layra_s),
            },
            "brute_force": {"p50_ms": _ms(brute_s, 50), "queries": len(brute_s)},
            "peers": {
                name: peer_runs[name].summary() if name in peer_runs else {"skipped": UNAVAILABLE[name]}
                for name in peers
            },
        }
    finally:
        for run in peer_runs.values():
            run.peer.close()
        if uri:
            _drop(index, layra)
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _drop(index: MilvusIndex, layra: str) -> None:
    """What the bench created on a server: its alias, its two physical collections, the baseline's."""
    with index.client() as client:
        for alias in (index.collection, index.pages):
            with contextlib.suppress(Exception):
                client.drop_alias(alias)
        for name in client.list_collections():
            if name.startswith(index.collection) or name == layra:
                client.drop_collection(name)
