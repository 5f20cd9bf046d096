"""The Milvus index: one row per token vector (the portable multi-vector schema, which Milvus
Lite, standalone and cluster all accept) plus a small summary collection of per-page centroids
for candidate generation.

Writes are idempotent per document: rows of a new generation are inserted first, then every
other generation of that document is deleted, so a crash at any point followed by a re-run
converges to exactly one copy. Search is exact MaxSim over candidate pages whose token vectors
are paged in with ``query_iterator`` (a plain ``query`` silently truncates at its limit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colqwen_pipeline.index.maxsim import maxsim, page_centroids

log = logging.getLogger(__name__)
INSERT_CHUNK = 4096


class IndexError_(Exception):
    """Refused write or unreachable index; one clear line."""


@dataclass(frozen=True)
class PageRows:
    """What the index needs of one page."""

    page: int  # 1-based
    sha256: str
    vectors: np.ndarray  # (tokens, dim), unit-norm
    image: str  # path of the rendered page


@dataclass(frozen=True)
class Hit:
    doc_id: str
    document: str
    page: int
    score: float
    image_path: str


def _page_key(doc_id: str, page: int) -> str:
    return f"{doc_id}#{page}"


def _quote(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


class MilvusIndex:
    def __init__(
        self,
        uri: str,
        collection: str = "colqwen_pages",
        token: str = "",
        centroids_per_page: int = 16,
        lock_wait_s: float = 120.0,
    ):
        self.uri, self.collection, self.token = uri, collection, token
        self.summary = f"{collection}_summary"
        self.centroids_per_page = centroids_per_page
        self.lock_wait_s = lock_wait_s

    # -- connection ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def client(self) -> Iterator[object]:
        """Open briefly and close: a Milvus Lite file admits one process at a time, so hold it
        only for the operation, and wait for another process's operation to finish."""
        from pymilvus import MilvusClient

        if "://" not in self.uri:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                client = MilvusClient(uri=self.uri, token=self.token) if self.token else MilvusClient(uri=self.uri)
                break
            except Exception as error:  # noqa: BLE001 - pymilvus wraps the lock error in several types
                locked = "lock" in str(error).lower()
                if not locked or time.monotonic() > deadline:
                    raise IndexError_(f"cannot open Milvus at {self.uri}: {str(error).splitlines()[0]}") from error
                time.sleep(0.25)
        try:
            yield client
        finally:
            client.close()

    # -- schema ----------------------------------------------------------------------------------
    def _create(self, client, fingerprint: str, dim: int) -> None:
        from pymilvus import DataType

        for name, extra in ((self.collection, []), (self.summary, [("document", 1024), ("image", 2048)])):
            schema = client.create_schema(auto_id=True)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
            schema.add_field("page", DataType.INT32)
            schema.add_field("page_key", DataType.VARCHAR, max_length=600)
            schema.add_field("page_sha256", DataType.VARCHAR, max_length=64)
            schema.add_field("generation", DataType.VARCHAR, max_length=40)
            for field, length in extra:
                schema.add_field(field, DataType.VARCHAR, max_length=length)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            index = client.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            for scalar in ("doc_id", "page_key"):
                index.add_index(field_name=scalar, index_type="INVERTED")
            client.create_collection(name, schema=schema, index_params=index)
            client.alter_collection_properties(name, {"colqwen.fingerprint": fingerprint, "colqwen.dim": str(dim)})
        log.info("created Milvus collections %s and %s (dim %d, %s)", self.collection, self.summary, dim, fingerprint)

    def collection_info(self, client) -> dict | None:
        if not client.has_collection(self.collection):
            return None
        properties = client.describe_collection(self.collection).get("properties") or {}
        dim = properties.get("colqwen.dim")
        return {"fingerprint": properties.get("colqwen.fingerprint"), "dim": int(dim) if dim else None}

    def _ensure(self, client, fingerprint: str, dim: int) -> None:
        info = self.collection_info(client)
        if info is None:
            self._create(client, fingerprint, dim)
            return
        if info.get("dim") != dim or info.get("fingerprint") != fingerprint:
            raise IndexError_(
                f"collection {self.collection!r} holds embeddings of {info.get('fingerprint')} (dim {info.get('dim')}); "
                f"refusing to add {fingerprint} (dim {dim}): set COLQWEN_COLLECTION to a new collection or reindex"
            )

    # -- writes ----------------------------------------------------------------------------------
    def replace_document(
        self, doc_id: str, document: str, pages: Sequence[PageRows], fingerprint: str, dim: int
    ) -> int:
        """Insert the document's new rows, then delete every older generation. Returns rows written."""
        for page in pages:
            if page.vectors.ndim != 2 or page.vectors.shape[1] != dim:
                raise IndexError_(f"{doc_id} page {page.page}: vectors of shape {page.vectors.shape}, expected (n, {dim})")
        generation = uuid.uuid4().hex
        with self.client() as client:
            self._ensure(client, fingerprint, dim)
            rows = 0
            for page in pages:
                base = {
                    "doc_id": doc_id,
                    "page": page.page,
                    "page_key": _page_key(doc_id, page.page),
                    "page_sha256": page.sha256,
                    "generation": generation,
                }
                rows += self._insert(client, self.collection, base, page.vectors)
                summary = base | {"document": document, "image": page.image}
                self._insert(client, self.summary, summary, page_centroids(page.vectors, self.centroids_per_page))
            self._delete(client, f'doc_id == "{doc_id}" and generation != "{generation}"')
        return rows

    def delete_document(self, doc_id: str) -> None:
        with self.client() as client:
            if client.has_collection(self.collection):
                self._delete(client, f'doc_id == "{doc_id}"')

    def _insert(self, client, name: str, base: dict, vectors: np.ndarray) -> int:
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(vectors), INSERT_CHUNK):
            chunk = vectors[start : start + INSERT_CHUNK]
            client.insert(name, [base | {"vector": v} for v in chunk.tolist()])
        return len(vectors)

    def _delete(self, client, expression: str) -> None:
        for name in (self.collection, self.summary):
            client.delete(name, filter=expression)

    # -- reads -----------------------------------------------------------------------------------
    def count_rows(self, doc_id: str | None = None) -> int:
        with self.client() as client:
            if not client.has_collection(self.collection):
                return 0
            self._load(client)
            expression = f'doc_id == "{doc_id}"' if doc_id else ""
            result = client.query(self.collection, filter=expression or "id >= 0", output_fields=["count(*)"])
            return int(result[0]["count(*)"])

    def document_ids(self) -> set[str]:
        with self.client() as client:
            if not client.has_collection(self.summary):
                return set()
            self._load(client)
            return {row["doc_id"] for row in self._iterate(client, self.summary, "id >= 0", ["doc_id"])}

    def _load(self, client) -> None:
        """A reopened collection starts released; loading is idempotent."""
        for name in (self.collection, self.summary):
            client.load_collection(name)

    def _iterate(self, client, name: str, expression: str, fields: list[str]) -> Iterator[dict]:
        iterator = client.query_iterator(name, batch_size=4096, filter=expression, output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def search(
        self,
        queries: Sequence[np.ndarray],
        top_k: int = 5,
        doc_ids: Sequence[str] | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Top-k pages per query by exact MaxSim over candidates from the centroid first stage."""
        with self.client() as client:
            if not client.has_collection(self.collection):
                return [[] for _ in queries]
            self._load(client)
            return [self._search_one(client, q, top_k, doc_ids, candidates) for q in queries]

    def _search_one(self, client, query: np.ndarray, top_k: int, doc_ids, candidates: int | None) -> list[Hit]:
        query = np.asarray(query, dtype=np.float32)
        wanted = candidates or max(4 * top_k, 32)
        expression = f"doc_id in {_quote(doc_ids)}" if doc_ids else ""
        results = client.search(
            self.summary,
            data=query.tolist(),
            limit=min(16384, wanted * self.centroids_per_page),
            filter=expression,
            output_fields=["page_key", "doc_id", "page", "document", "image"],
            search_params={"metric_type": "IP"},
        )
        approx, meta = _approximate_scores(results)
        ranked = sorted(approx, key=approx.get, reverse=True)[:wanted]
        if not ranked:
            return []
        vectors = {key: [] for key in ranked}
        for row in self._iterate(client, self.collection, f"page_key in {_quote(ranked)}", ["page_key", "vector"]):
            vectors[row["page_key"]].append(row["vector"])
        pages = [np.asarray(vectors[k], dtype=np.float32).reshape(-1, query.shape[1]) for k in ranked]
        scores = maxsim(query, pages)
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [
            Hit(meta[ranked[i]]["doc_id"], meta[ranked[i]]["document"], int(meta[ranked[i]]["page"]),
                float(scores[i]), meta[ranked[i]]["image"])
            for i in best
        ]


def _approximate_scores(results: list[list[dict]]) -> tuple[dict[str, float], dict[str, dict]]:
    """Per page: sum over query tokens of its best centroid similarity among the hits; a page
    missing from a token's hits gets that token's lowest returned similarity (an upper bound)."""
    best: dict[str, dict[int, float]] = {}
    meta: dict[str, dict] = {}
    floors = []
    for q, hits in enumerate(results):
        floors.append(min((h["distance"] for h in hits), default=0.0))
        for hit in hits:
            entity = hit["entity"]
            key = entity["page_key"]
            meta.setdefault(key, entity)
            scores = best.setdefault(key, {})
            scores[q] = max(scores.get(q, -1.0), hit["distance"])
    approx = {key: sum(s.get(q, floors[q]) for q in range(len(results))) for key, s in best.items()}
    return approx, meta
