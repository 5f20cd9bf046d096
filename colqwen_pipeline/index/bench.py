"""``colqwen-pipeline bench search``: our search vs brute force, a LAYRA-style baseline and embedded
peers (``--peers lancedb,qdrant-local``), one run, at any size (``--pages 100000``).

The pages are SYNTHETIC (no model runs): clustered pages (780 unit-norm 128-d tokens,
fp16-representable like the embedding artifacts) drawn around a few topics per page out of a
shared pool, and 25-token queries drawn near a target page's tokens and topics (not copies), so
other pages compete. They go through the real index code (``MilvusIndex``, Lite or a server) and
the product's search. Ground truth is exact brute-force MaxSim over every page, streamed a chunk
of pages at a time with a running top-5, so it fits in memory at any size.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.index.base import DocumentRows, PageRows
from colqwen_pipeline.index.maxsim import maxsim, maxsim_uniform
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline.index.peers import PEERS, UNAVAILABLE, Peer
from colqwen_pipeline.index.pooling import token_pooler

TOKENS, DIM, QUERY_TOKENS, TOPICS_PER_PAGE, PAGES_PER_DOC = 780, 128, 25, 8, 10
LAYRA = "layra_tokens"


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


class SyntheticPages:
    """Clustered synthetic pages, any page drawn on its own from its seed (so a million pages are
    generated chunk by chunk and never held at once): 780 unit-norm 128-d tokens, fp16-representable
    (exactly what fp16 storage holds), around 8 topic centres. A document's 10 pages share 4 of its 6
    topics (drawn from a common pool), each page adds 4 of its own: relevance is graded (same topic,
    same document) rather than all-or-nothing."""

    def __init__(self, pages: int, seed: int = 0):
        self.pages, self.seed = pages, seed
        rng = np.random.default_rng(seed)
        self.pool = _unit(rng.standard_normal((max(64, pages // 8), DIM), dtype=np.float32))

    def _document_topics(self, doc: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, doc))
        chosen = self.pool[rng.choice(len(self.pool), 6, replace=False)]
        return _unit(chosen + 0.5 * _unit(rng.standard_normal((6, DIM), dtype=np.float32)))

    def page(self, page: int, doc_topics: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(780 x 128 fp32 tokens, 8 x 128 topic centres) of one page."""
        doc = page // PAGES_PER_DOC
        topics = self._document_topics(doc) if doc_topics is None else doc_topics
        rng = np.random.default_rng((self.seed, doc, page))
        shared = topics[rng.choice(6, 4, replace=False)]
        own = _unit(rng.standard_normal((TOPICS_PER_PAGE - 4, DIM), dtype=np.float32))
        noise = _unit(rng.standard_normal((TOPICS_PER_PAGE, DIM), dtype=np.float32))
        centres = _unit(np.concatenate([shared, own]) + 0.3 * noise)
        assign = rng.integers(0, TOPICS_PER_PAGE, TOKENS)
        token_noise = rng.standard_normal((TOKENS, DIM), dtype=np.float32) / np.sqrt(DIM)
        tokens = _unit(centres[assign] + 0.7 * token_noise)
        return tokens.astype(np.float16).astype(np.float32), centres

    def chunks(self, chunk_pages: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first page, (n*780, 128) tokens) for consecutive runs of whole documents."""
        step = max(PAGES_PER_DOC, chunk_pages // PAGES_PER_DOC * PAGES_PER_DOC)
        for first in range(0, self.pages, step):
            block, topics = [], None
            for p in range(first, min(self.pages, first + step)):
                if p % PAGES_PER_DOC == 0:  # first pages open documents (a chunk is whole documents)
                    topics = self._document_topics(p // PAGES_PER_DOC)
                block.append(self.page(p, topics)[0])
            yield first, np.concatenate(block)


def synthetic_pages(pages: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every page at once: (pages*780, 128) tokens and (pages, 8, 128) centres (small benches, tests)."""
    source = SyntheticPages(pages, seed)
    drawn = [source.page(p) for p in range(pages)]
    return np.concatenate([t for t, _ in drawn]), np.stack([c for _, c in drawn])


def synthetic_queries(tokens: np.ndarray, centres: np.ndarray, count: int, seed: int = 1) -> list[np.ndarray]:
    """Queries of pages held at once (``synthetic_pages``)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(centres), count)
    return [_query(rng, tokens[t * TOKENS : (t + 1) * TOKENS], centres[t]) for t in targets]


def streamed_queries(source: SyntheticPages, count: int, seed: int = 1) -> list[np.ndarray]:
    """The same queries, drawing only their target pages from ``source``."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, source.pages, count)
    return [_query(rng, *source.page(int(t))) for t in targets]


def _query(rng: np.random.Generator, tokens: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """15 tokens near random tokens of the target page, 10 near its topics (looser)."""
    near_tokens = tokens[rng.integers(0, TOKENS, 15)]
    near_topics = centres[rng.integers(0, TOPICS_PER_PAGE, QUERY_TOKENS - 15)]
    noise = rng.standard_normal((QUERY_TOKENS, DIM), dtype=np.float32) / np.sqrt(DIM)
    base = np.concatenate([near_tokens, near_topics])
    return _unit(base + np.where(np.arange(QUERY_TOKENS)[:, None] < 15, 0.5, 0.8) * noise)


class StreamingTruth:
    """Exact top-5 per query by brute-force MaxSim, fed one chunk of pages at a time (memory: one
    chunk), with the scoring time per query summed over the chunks (numpy fp32, its best case)."""

    def __init__(self, queries: Sequence[np.ndarray], k: int = 5):
        self.queries, self.k = queries, k
        self.best = [(np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)) for _ in queries]
        self.seconds = [0.0] * len(queries)

    def add(self, first_page: int, tokens: np.ndarray) -> None:
        for i, query in enumerate(self.queries):
            started = time.perf_counter()
            scores = maxsim_uniform(query, tokens, TOKENS)
            self.seconds[i] += time.perf_counter() - started
            kept_scores, kept_pages = self.best[i]
            scores = np.concatenate([kept_scores, scores])
            pages = np.concatenate([kept_pages, first_page + np.arange(len(tokens) // TOKENS)])
            top = np.argsort(-scores, kind="stable")[: self.k]
            self.best[i] = (scores[top], pages[top])

    def top(self, i: int) -> set[int]:
        return set(self.best[i][1].tolist())


def rss_anon_bytes(pid: int | str = "self") -> int:
    """Anonymous resident memory of a process (Linux /proc): what neither a file nor swap backs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def _ms(seconds: list[float], q: float) -> float | None:
    if not seconds:  # e.g. the LAYRA baseline skipped at 10,000 pages (minutes per query)
        return None
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 1)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _documents(first_page: int, page_vectors: Sequence[np.ndarray]) -> list[DocumentRows]:
    """Consecutive pages as documents of ``PAGES_PER_DOC`` pages (``first_page`` opens one)."""
    documents = []
    for start in range(0, len(page_vectors), PAGES_PER_DOC):
        doc = (first_page + start) // PAGES_PER_DOC
        rows = [
            PageRows(i + 1, f"{first_page + start + i:064x}", vectors, f"page-{first_page + start + i}.png")
            for i, vectors in enumerate(page_vectors[start : start + PAGES_PER_DOC])
        ]
        documents.append(DocumentRows(f"doc-{doc}", f"doc-{doc}.pdf", rows))
    return documents


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
        self.peer = peer
        self.seconds: list[float] = []
        self.recall: list[float] = []
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


def measure_search(index: MilvusIndex, queries: list[np.ndarray], truth: list[set[int]]) -> dict:
    """Our search as a fresh searcher sees it (run in a spawned process): open and first query, then
    each query timed, then all in one batch; RssAnon growth from before opening (libraries imported)
    to after the searches, Lite's in-process server included."""
    import pymilvus  # noqa: F401 - imported before the baseline: library code is not the index's memory

    from colqwen_pipeline.index import lite_server  # noqa: F401

    before = rss_anon_bytes()
    started = time.perf_counter()
    seconds: list[float] = []
    recall: list[float] = []
    with index.session():
        index.search(queries[:1], top_k=5)  # opens the file and loads the collections
        first_query_s = time.perf_counter() - started
        for query, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            hits = index.search([query], top_k=5)[0]
            seconds.append(time.perf_counter() - started)
            recall.append(len({_page_number(h) for h in hits} & expected) / 5)
        started = time.perf_counter()
        index.search(queries, top_k=5)
        batch_s = time.perf_counter() - started
        growth = rss_anon_bytes() - before
    return {
        "seconds": seconds,
        "recall": recall,
        "first_query_s": first_query_s,
        "batch_s": batch_s,
        "rss_anon_growth": growth,
    }


CHUNK_PAGES = 1000  # pages generated, scored for the truth and written at a time (~400 MB of fp32)


def bench_search(
    pages: int = 1000,
    queries: int = 50,
    layra_queries: int | None = None,
    workdir: str | None = None,
    uri: str | None = None,
    peers: Sequence[str] = (),
    token_pooling: int = 0,
    server_pid: int | None = None,
) -> dict:
    """One run through the real index code (``MilvusIndex``, the product's search) on synthetic
    pages (``SyntheticPages``: no model runs here), built chunk by chunk: each chunk of pages is
    generated, scored by brute force against every query (the truth: a running exact top-5, so
    memory holds one chunk at any size), then written. Then our search, query by query, then the
    baselines (which hold every page in RAM, so small runs only) on the same queries.

    ``brute_force_p50_ms``: a query's numpy MaxSim time summed over the chunks (fp32 in RAM, its best
    case; generating the pages is not counted). ``rss_anon_bytes_per_page``: growth of this process's
    anonymous resident memory (Lite runs in it) from before the build to after the searches, plus
    ``server_pid``'s RssAnon (a Milvus server's process, when given) per page.
    ``bytes_per_page_disk``: the Lite file's size plus its token stores (null on a server: not the
    client's disk).
    ``build_s``: writing every page, then opening the index and answering a first query.

    ``uri``: a Milvus server (``http://host:19530``) instead of a temporary Lite file; the bench
    writes collections of its own there (``bench_<random>``) and drops them at the end.
    ``peers``: names from ``peers.PEERS`` (``lancedb``, ``qdrant-local``), each ingesting the same pages
    after our measurements and timed on the same queries.
    ``layra_queries``: the LAYRA-style baseline (5 queries by default up to 2,000 pages).
    ``token_pooling``: our index stores the pages pooled by this factor (``index.pooling``); the truth
    stays exact MaxSim over the unpooled tokens, so recall says what pooling costs.
    ``workdir``: the index is built there and kept, with a record of the build (its truth, times and
    size); a later run with the same workdir and settings measures search on it without rebuilding
    (the 100,000-page build takes most of an hour); a server's collections are then kept too."""
    if layra_queries is None:
        layra_queries = 5 if pages <= LAYRA_MAX_PAGES else 0
    root = Path(workdir or tempfile.mkdtemp(prefix="colqwen-bench-"))
    db = root / "milvus.db"
    wanted = {"pages": pages, "queries": queries, "token_pooling": token_pooling, "uri": uri}
    built = _finished_build(root, wanted)
    name = built["name"] if built else f"bench_{secrets.token_hex(4)}" if uri else "bench"
    index = MilvusIndex(uri or str(db), name, token_dir=root / "tokens")
    layra = f"{name}_{LAYRA}"
    peer_runs: dict[str, _PeerRun] = {}
    try:
        source = SyntheticPages(pages)
        query_set = streamed_queries(source, queries)
        truth = StreamingTruth(query_set)
        if built is None:
            built = _build(index, source, truth, token_pooling) | wanted | {"name": name}
            # The Lite file and its token stores (a server's disk is not ours to read; its stores are)
            built["bytes_per_page"] = None if uri else round((_disk_bytes(db) + _disk_bytes(index.token_dir)) / pages)
            if workdir:  # a later run with the same workdir measures search again without rebuilding
                (root / BUILD_RECORD).write_text(json.dumps(built))
        else:
            truth.best = [(np.asarray(s, dtype=np.float32), np.asarray(p)) for s, p in built["truth"]]
            truth.seconds = built["truth_seconds"]
        build_s, pool_s, stored_vectors = built["build_s"], built["pool_s"], built["stored_vectors"]
        ingest_s, bytes_per_page = build_s, built["bytes_per_page"]
        # Searched from a fresh process: its memory is the index's, not the build's garbage.
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as searcher:
            run = searcher.submit(measure_search, index, query_set, [truth.top(i) for i in range(queries)]).result()
        build_s += run["first_query_s"]
        rss_growth = run["rss_anon_growth"] + (rss_anon_bytes(server_pid) if server_pid else 0)
        with index.session():
            # The baselines hold every page in RAM (small runs only), after our measurements.
            everything = synthetic_pages(pages)[0] if peers or layra_queries else np.zeros((0, DIM), np.float32)
            peer_runs = _start_peers(peers, root, everything) if peers else {}
            for i, query in enumerate(query_set):
                for peer_run in peer_runs.values():
                    peer_run.query(query, truth.top(i))
            layra_s, layra_recall = [], []
            with index.client() as client:
                if layra_queries:
                    _layra_collection(client, everything, layra)
                for i, query in enumerate(query_set[:layra_queries]):
                    started = time.perf_counter()
                    top = _layra_search(client, query, layra)
                    layra_s.append(time.perf_counter() - started)
                    layra_recall.append(len(set(top) & truth.top(i)) / 5)
        return {
            "pages": pages,
            "p50_ms": _ms(run["seconds"], 50),
            "p95_ms": _ms(run["seconds"], 95),
            "recall_at_5": round(float(np.mean(run["recall"])), 4),
            "brute_force_p50_ms": _ms(truth.seconds, 50),
            "bytes_per_page_disk": bytes_per_page,
            "rss_anon_bytes_per_page": round(rss_growth / pages),
            "build_s": round(build_s, 1),
            "queries": len(query_set),
            "milvus": "server " + uri if uri else "lite",
            "ours": {
                "ingest_rows_per_s": round(stored_vectors / ingest_s),
                "vectors_per_page": round(stored_vectors / pages, 1),
                "token_pooling": token_pooling,
                "pooling_s_per_page": round(pool_s / pages, 4),
                "open_and_first_query_ms": round(run["first_query_s"] * 1000, 1),
                "batch_of_queries_ms_per_query": round(run["batch_s"] * 1000 / len(query_set), 1),
                "candidates": index.candidates,
                "hits_per_token": index.hits_per_token,
                "centroids_per_page": index.centroids_per_page,
                "server_process_measured": bool(server_pid),
            },
            "layra_baseline": {
                "p50_ms": _ms(layra_s, 50),
                "recall_at_5": round(float(np.mean(layra_recall)), 4) if layra_recall else None,
                "queries": len(layra_s),
            },
            "peers": {
                name: peer_runs[name].summary() if name in peer_runs else {"skipped": UNAVAILABLE[name]}
                for name in peers
            },
        }
    finally:
        for peer_run in peer_runs.values():
            peer_run.peer.close()
        if uri and workdir is None:
            _drop(index, layra)
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


BUILD_RECORD = "bench-build.json"


def _build(index: MilvusIndex, source: SyntheticPages, truth: StreamingTruth, token_pooling: int) -> dict:
    """Write every page chunk by chunk, feeding the truth; what a later run needs to reuse it."""
    pooler = token_pooler(token_pooling)
    build_s = pool_s = 0.0
    stored_vectors = 0
    with index.session():
        for first, tokens in source.chunks(CHUNK_PAGES):
            truth.add(first, tokens)
            started = time.perf_counter()
            vectors = pooler.pool([tokens[p * TOKENS : (p + 1) * TOKENS] for p in range(len(tokens) // TOKENS)])
            pool_s += time.perf_counter() - started
            stored_vectors += sum(len(v) for v in vectors)
            started = time.perf_counter()
            index.replace_documents(_documents(first, vectors), "bench", DIM)
            build_s += time.perf_counter() - started
            if first // CHUNK_PAGES % 10 == 9:
                print(f"bench: {first + CHUNK_PAGES:,} of {source.pages:,} pages written", file=sys.stderr, flush=True)
    return {
        "build_s": build_s,
        "pool_s": pool_s,
        "stored_vectors": stored_vectors,
        "truth": [(s.tolist(), p.tolist()) for s, p in truth.best],
        "truth_seconds": truth.seconds,
    }


def _finished_build(root: Path, wanted: dict) -> dict | None:
    """The record of an earlier run's build in ``root`` with the same settings, if there is one."""
    path = root / BUILD_RECORD
    if not path.exists():
        return None
    built = json.loads(path.read_text())
    return built if all(built.get(key) == value for key, value in wanted.items()) else None


def _drop(index: MilvusIndex, layra: str) -> None:
    """What the bench created on a server: its alias, its two physical collections, the baseline's."""
    with index.client() as client:
        for alias in (index.collection, index.pages):
            with contextlib.suppress(Exception):
                client.drop_alias(alias)
        for name in client.list_collections():
            if name.startswith(index.collection) or name == layra:
                client.drop_collection(name)
