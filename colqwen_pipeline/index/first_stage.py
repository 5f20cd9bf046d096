"""The two first stages of the Milvus index (``two_stage.FirstStage``), and where each is used.

``MilvusCentroids``: the pages' k-means centroids as rows of the searched collection, one HNSW
search for every query token (a server: its knowhere index holds 8 vectors a page in a few KB).
``ScannedCentroids``: the same centroids read from the token store's memory-mapped file and scored
exhaustively in blocks (Milvus Lite: its rows cost ~5 KB each of anonymous memory, 40 KB a page
for 8 centroids, against the 16 KB a page goal; the scan reads page cache instead, and scores every
page's approximate MaxSim rather than approximating it from per-token hits).

``for_index`` picks one, in this one place; a write calls ``write`` on the one its index searches.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from colqwen_pipeline.index.milvus_rows import ROW_BITS, NewRows, quote
from colqwen_pipeline.index.token_store import TokenStore
from colqwen_pipeline.index.two_stage import TokenHit, approximate_scores

if TYPE_CHECKING:
    from colqwen_pipeline.index.milvus import MilvusIndex

MAX_REQUEST_ROWS = 16_384  # a Milvus server's default cap on query/get/search result rows
INSERT_BYTES = 16 << 20  # payload per insert call: few round trips, far below gRPC's limits
MAX_QUERY_VECTORS = 1024  # query tokens per ANN call
ESTIMATE_TTL_S = 5.0  # how long search trusts a row count (as stale as a server's Bounded reads)


class CentroidStage(ABC):
    """A first stage that also owns the writing of its summaries."""

    @abstractmethod
    def write(self, rows: NewRows, dim: int) -> None:
        """Make a new generation's pages findable (after their pages rows are written)."""

    @abstractmethod
    def pages_estimate(self) -> int: ...

    @abstractmethod
    def ranked(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]: ...


def for_index(index: MilvusIndex, client: Any, store: TokenStore | None, consistency: str) -> CentroidStage:
    """Lite scans the store's centroids; a server (or a schema-4 index, which has no store)
    searches its HNSW centroid rows."""
    if index.is_lite and store is not None:
        return ScannedCentroids(store)
    return MilvusCentroids(index, client, consistency)


class ScannedCentroids(CentroidStage):
    def __init__(self, store: TokenStore):
        self.store = store

    def write(self, rows: NewRows, dim: int) -> None:
        """Nothing: the store got the centroids with the tokens."""

    def pages_estimate(self) -> int:
        return self.store.live_records()  # no RPC: the store's own count

    def ranked(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]:
        return self.store.scan(queries, doc_ids, depth)


class MilvusCentroids(CentroidStage):
    def __init__(self, index: MilvusIndex, client: Any, consistency: str):
        self.index, self.client, self.consistency = index, client, consistency

    def write(self, rows: NewRows, dim: int) -> None:
        insert_rows(self.client, self.index.collection, rows.centroid_rows(dim), lambda _: 4 * dim + 128)

    def pages_estimate(self) -> int:
        """Pages in the collection, from its row count (a page has up to ``centroids_per_page``
        rows), asked at most every ``ESTIMATE_TTL_S``: the call cost ~6 ms of a 1,000-page query on
        Lite, and a stale answer only picks the other of two exact-enough paths."""
        index = self.index
        when, pages = index._estimates.get(index.collection, (-ESTIMATE_TTL_S, 0))
        if time.monotonic() - when >= ESTIMATE_TTL_S:
            pages = -(-self._centroid_rows() // index.centroids_per_page)
            index._estimates[index.collection] = (time.monotonic(), pages)
        return pages

    def _centroid_rows(self) -> int:
        """Lite: its row statistics. A server's statistics count flushed segments only (0 for a new
        index), so ask it to count (2.3+), as current as this search's consistency."""
        if self.index.is_lite:
            return int(self.client.get_collection_stats(self.index.collection).get("row_count", 0))
        self.index._load(self.client, self.index.collection)
        reply = self.client.query(
            self.index.collection, filter="", output_fields=["count(*)"], consistency_level=self.consistency
        )
        return int(reply[0]["count(*)"])

    def ranked(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]:
        """One ANN call for all query tokens; pages ranked by the approximate MaxSim of the hits."""
        hits = self._token_hits(np.concatenate(queries), doc_ids)
        ranked, offset = [], 0
        for query in queries:
            scores = approximate_scores(hits[offset : offset + len(query)])
            offset += len(query)
            ranked.append(sorted(scores, key=lambda uid: scores[uid], reverse=True)[:depth])
        return ranked

    def _token_hits(self, tokens: np.ndarray, doc_ids: Sequence[str] | None) -> list[list[TokenHit]]:
        index = self.index
        index._load(self.client, index.collection)
        expression = f"doc_id in {quote(doc_ids)}" if doc_ids else ""
        limit = min(index.hits_per_token, MAX_REQUEST_ROWS)
        hits: list[list[TokenHit]] = []
        for start in range(0, len(tokens), MAX_QUERY_VECTORS):
            replies = self.client.search(
                index.collection,
                data=tokens[start : start + MAX_QUERY_VECTORS].tolist(),
                limit=limit,
                filter=expression,
                # The key already encodes the page; Lite answers an empty field list with every
                # field (vectors included), ~2x slower, so ask for one short one.
                output_fields=["doc_id"],
                search_params={"metric_type": "IP", "params": {"ef": max(limit, 64)}},
                consistency_level=self.consistency,
            )
            hits += [[TokenHit(h["id"] >> ROW_BITS, h["distance"]) for h in reply] for reply in replies]
        return hits


def insert_rows(client: Any, name: str, rows: list[dict], bytes_per_row: Any) -> None:
    """Insert in as few calls as the payload allows (rows of many pages per call)."""
    batch: list[dict] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += bytes_per_row(row)
        if size >= INSERT_BYTES or len(batch) >= MAX_REQUEST_ROWS:
            client.insert(name, batch)
            batch, size = [], 0
    if batch:
        client.insert(name, batch)
