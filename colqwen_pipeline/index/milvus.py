"""The Milvus index: two collections with a portable schema (Milvus Lite, standalone and cluster
accept it unchanged, chosen by URI).

``<name>``        the search collection: per page, ``centroids_per_page`` rows whose vectors are
                  spherical k-means centroids of its tokens (HNSW). Small rows, no partitions:
                  the first stage stays one fast ANN call at any size.
``<name>_pages``  the pages: per page a few rows carrying its metadata and its fp16 token vectors
                  packed in base64 chunks (the exact stage reads a page in a handful of rows),
                  spread over ``partitions`` by a partition key on ``doc_id``, so no segment
                  merge ever handles gigabytes of strings (Milvus Lite's compaction fails past
                  2 GB of strings in one merge: ~7,500 pages in a single partition).

Search (``two_stage``): all query tokens of all queries go to one ANN call over the centroids;
pages are ranked by the approximate MaxSim those hits give; the best ``candidates`` pages are
fetched by primary key (``_MilvusPages``) and scored by exact MaxSim. Writes are idempotent per
document: a new generation is written (pages rows first, then centroid rows), then older
generations are deleted (centroid rows first); a crash anywhere followed by a re-run converges
to exactly one copy, and search hides an older generation.

Here: the class (connection through ``connection``, aliases and rebuilds, writes, reads) and the
page store the two-stage search reads; ``milvus_schema`` creates the collections, ``milvus_rows``
defines their rows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.index import first_stage, lite_server, two_stage
from colqwen_pipeline.index.base import DocumentIndex, DocumentRows, Hit, IndexRefused
from colqwen_pipeline.index.connection import LiteBusy, load_once, shared_client
from colqwen_pipeline.index.first_stage import MAX_REQUEST_ROWS, insert_rows
from colqwen_pipeline.index.maxsim import page_centroids
from colqwen_pipeline.index.milvus_rows import (
    ROW_BITS,
    NewRows,
    check_shapes,
    chunked_page,
    implied_dim,
    literal,
    new_generation,
    newest,
    quote,
)
from colqwen_pipeline.index.milvus_schema import (
    CONSISTENCY,
    create_collections,
    open_collections,
    require_supported_server,
)
from colqwen_pipeline.index.token_store import NewPage, SegmentStore, TokenStore
from colqwen_pipeline.index.two_stage import StoredPage

log = logging.getLogger(__name__)

# 5: tokens in the token store (7-bit codes, memory-mapped), one pages row per page;
# 4: fp16 tokens in VARCHAR chunks of the pages rows (still read, never written)
SCHEMA_VERSION = "5"
CHUNKED_SCHEMA = "4"
FIRST_FETCH_CHUNKS = 8  # schema 4: chunks fetched per candidate before knowing n_chunks
# Replies must stay under gRPC's 256 MB message cap (a 50-query batch at 10,000 pages once asked
# for 401 MB): at most 2,048 rows per get (and two_stage reads 256 pages at a time).
MAX_GET_IDS = 2048
RECLAIM_AGE_S = 3600.0  # a store record without a row is an orphan once no writer can still be busy with it


_GEN_FIELDS = ["doc_id", "generation"]
ROW_FIELDS = ["doc_id", "document", "page", "page_sha256", "generation", "image", "n_tokens", "record"]
CHUNK_FIELDS = [
    "page_uid",
    "chunk",
    "n_chunks",
    "n_tokens",
    "tokens",
    "doc_id",
    "document",
    "page",
    "page_sha256",
    "generation",
    "image",
]


def _quiet_pymilvus() -> None:
    """pymilvus configures its own loggers at import (INFO, with handlers) and logs a traceback for
    every RPC error, including the ones this module expects and handles (a missing alias); the gRPC
    server of a Lite file logs Lite's missing AllocTimestamp."""
    for name in ("pymilvus", "pymilvus.milvus_client", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class MilvusIndex(DocumentIndex):
    schema_version = SCHEMA_VERSION

    def __init__(
        self,
        uri: str,
        collection: str = "colqwen_pages",
        token: str = "",
        *,
        centroids_per_page: int = 8,
        hits_per_token: int = 64,
        candidates: int = 20,  # 32 cost 1.35x the p50 of 20 at the same recall@5 (docs/search.md)
        index_type: str = "HNSW",
        partitions: int = 16,
        lock_wait_s: float = 120.0,
        aliased: bool = True,
        search_consistency: str = "Bounded",
        token_dir: str | Path | None = None,
        token_bits: int = 7,
    ):
        self.uri, self.collection, self.token = uri, collection, token
        # The token stores, one folder per physical collection: beside a Lite file, or a folder
        # of the searching and writing machine's for a server (docs/search.md).
        self.token_dir = Path(token_dir) if token_dir else default_token_dir(uri)
        self.token_bits = token_bits
        self._stores: dict[Path, SegmentStore] = {}  # kept across calls: their maps stay open
        # The configured name is an alias over a physical collection per model fingerprint, so a
        # reindex with a new model fills a new collection and switches the alias when complete.
        self.aliased = aliased
        self.pages = f"{collection}_pages"
        self.centroids_per_page = centroids_per_page
        self.hits_per_token = hits_per_token
        self.candidates = candidates
        self.index_type = index_type
        self.partitions = partitions
        self.lock_wait_s = lock_wait_s
        # search() only: Strong costs a server ~1 s per query (it waits for the next time tick;
        # 994 vs 120 ms at 300 pages on 2.3.5), Bounded sees writes older than ~5 s. Counts, checks,
        # exact search and the engine's own reads are Strong (the collections' default).
        self.search_consistency = search_consistency
        self.exact_share = two_stage.EXACT_SHARE
        self._held: Any = None
        self._estimates: dict[str, tuple[float, int]] = {}  # collection -> (when, pages), see _pages_estimate

    @classmethod
    def from_settings(cls, settings: Any) -> MilvusIndex:
        return cls(
            settings.resolved_milvus_uri,
            settings.collection,
            settings.milvus_token,
            centroids_per_page=settings.index_centroids_per_page,
            hits_per_token=settings.index_hits_per_token,
            candidates=settings.index_candidates,
            index_type=settings.index_type,
            partitions=settings.index_partitions,
            search_consistency=settings.index_search_consistency,
            token_dir=settings.index_token_dir or default_token_dir(settings.resolved_milvus_uri, settings.home_dir),
            token_bits=settings.index_token_bits,
        )

    @property
    def score_error_per_token(self) -> float:  # type: ignore[override]
        """Three standard deviations of a token's similarity error at ``token_bits`` (quantisation
        step max|x| / levels, ~0.3 for unit 128-d vectors; error per dimension step / sqrt(12))."""
        return token_error_per_token(self.token_bits)

    @property
    def is_lite(self) -> bool:
        return "://" not in self.uri

    # -- connection ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """This process's shared client (``connection.shared_client``): a Milvus Lite file admits
        one process at a time, so it is held only while some thread of this process uses it, and
        processes take turns in arrival order. Inside ``session()`` the held client is reused."""
        if self._held is not None:
            yield self._held
            return
        lite_file = Path(self.uri).resolve() if self.is_lite else None
        key = str(lite_file) if lite_file else f"{self.uri}|{hashlib.sha256(self.token.encode()).hexdigest()}"
        try:
            with shared_client(key, self._open, lite_file, self.lock_wait_s) as client:
                yield client
        except LiteBusy as error:
            raise IndexRefused(
                f"Milvus Lite file {self.uri} stayed busy for {self.lock_wait_s:.0f} s ({error}); "
                "try again, or serve it to many processes with a Milvus server (COLQWEN_MILVUS_URI)"
            ) from None

    @contextlib.contextmanager
    def session(self) -> Iterator[MilvusIndex]:
        """Keep one connection (and a Lite file's lock) across calls: for a long-lived searcher
        or a benchmark; other processes wait until the session ends."""
        with self.client() as client:
            self._held = client
            try:
                yield self
            finally:
                self._held = None

    def _open(self) -> Any:
        """A new client; on Lite, called in this process's turn."""
        _quiet_pymilvus()
        try:
            return self._open_lite() if self.is_lite else self._open_server()
        except IndexRefused:
            raise
        except Exception as error:  # noqa: BLE001 - pymilvus and Lite raise many types; one line names the URI
            raise IndexRefused(f"cannot open Milvus at {self.uri}: {str(error).splitlines()[0]}") from error

    def _open_server(self) -> Any:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, token=self.token) if self.token else MilvusClient(uri=self.uri)
        require_supported_server(client, self.uri)
        return client

    def _open_lite(self) -> Any:
        """A client of this process's own token-guarded Lite server (``lite_server``). A process
        outside the turn queue, such as an older version of this project, may still hold the file:
        wait for it too."""
        from milvus_lite.exceptions import DataDirLockedError
        from pymilvus import MilvusClient

        lite_file = Path(self.uri).resolve()
        lite_file.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                endpoint = lite_server.start(lite_file)
                break
            except DataDirLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        try:
            client = MilvusClient(uri=endpoint.uri, token=endpoint.token)
            open_collections(client, [self.collection, self.pages])
        except BaseException:
            lite_server.stop(lite_file)
            raise
        return client

    def _create(self, client: Any, fingerprint: str, dim: int) -> None:
        if self.aliased:
            target = self.rebuild_target(fingerprint)
            if target.collection_info(client) is None:
                target._create(client, fingerprint, dim)
            target._point_aliases(client, self)
            return
        properties = {
            "colqwen.schema": self.schema_version,
            "colqwen.fingerprint": fingerprint,
            "colqwen.dim": str(dim),
            "colqwen.centroids": str(self.centroids_per_page),
            "colqwen.physical": self.collection,  # names its token store folder
        }
        create_collections(
            client,
            collection=self.collection,
            pages=self.pages,
            properties=properties,
            dim=dim,
            partitions=self.partitions,
            index_type=self.index_type,
            lite=self.is_lite,
        )
        log.info("created Milvus collections %s and %s (dim %d, %s)", self.collection, self.pages, dim, fingerprint)

    # -- model changes: one physical collection pair per fingerprint behind the alias -------------
    def rebuild_target(self, fingerprint: str) -> MilvusIndex:
        """The same index over the physical collections of ``fingerprint`` (not via the alias)."""
        digest = hashlib.sha256(f"{fingerprint}|schema {self.schema_version}".encode()).hexdigest()[:10]
        target = copy.copy(self)
        target.collection, target.pages = f"{self.collection}__{digest}", f"{self.collection}__{digest}_pages"
        target.aliased, target._held = False, self._held
        return target

    def live_fingerprint(self) -> str | None:
        with self.client() as client:
            info = self.collection_info(client)
        return info["fingerprint"] if info else None

    def rebuild_reason(self, fingerprint: str) -> str | None:
        """Why the live collections cannot take ``fingerprint``'s embeddings (a reindex then
        rebuilds into new ones), or None."""
        with self.client() as client:
            info = self.collection_info(client)
        if info is None:
            return None
        if info["schema"] != self.schema_version:
            return f"index schema changed ({info['schema']} -> {self.schema_version})"
        if info["fingerprint"] != fingerprint:
            return f"model changed ({info['fingerprint']} -> {fingerprint})"
        return None

    def switch_to(self, fingerprint: str) -> None:
        """Point the alias at ``fingerprint``'s collections: searches move over in one step. The
        previous collections are kept (never dropped implicitly)."""
        with self.client() as client:
            self.rebuild_target(fingerprint)._point_aliases(client, self)

    def _point_aliases(self, client: Any, alias: MilvusIndex) -> None:
        for physical, name in ((self.pages, alias.pages), (self.collection, alias.collection)):
            if name in client.list_collections():
                raise IndexRefused(f"{name!r} is a collection, not an alias: set COLQWEN_COLLECTION to a new name")
            try:
                current = client.describe_alias(name).get("collection_name")
            except Exception:  # noqa: BLE001 - pymilvus raises when the alias does not exist
                current = None
            if current is None:
                client.create_alias(physical, name)
            elif current != physical:
                client.alter_alias(physical, name)
        log.info("alias %s now points at %s", alias.collection, self.collection)

    def collection_info(self, client: Any) -> dict | None:
        if not client.has_collection(self.collection):
            return None
        properties = client.describe_collection(self.collection).get("properties") or {}
        dim = properties.get("colqwen.dim")
        return {
            "schema": properties.get("colqwen.schema"),
            "fingerprint": properties.get("colqwen.fingerprint"),
            "dim": int(dim) if dim else None,
            "physical": properties.get("colqwen.physical"),
        }

    def _existing_info(self, client: Any) -> dict:
        """``collection_info`` of a collection the caller has seen exist (dropped since: refused)."""
        info = self.collection_info(client)
        if info is None:
            raise IndexRefused(f"collection {self.collection!r} does not exist (dropped while in use?)")
        return info

    def _store(self, info: dict) -> SegmentStore | None:
        """The token store of the physical collection ``info`` describes (None for schema 4)."""
        if info["schema"] == CHUNKED_SCHEMA or not info["physical"]:
            return None
        folder = self.token_dir / info["physical"]
        if folder not in self._stores:
            self._stores[folder] = SegmentStore(folder, info["dim"], self.centroids_per_page, self.token_bits)
        return self._stores[folder]

    def _rows(self, client: Any, info: dict, consistency: str = CONSISTENCY) -> _StoreRows | _ChunkedRows:
        """How this collection's pages are read: rows pointing into the store, or schema 4's chunks."""
        store = self._store(info)
        if store is None:
            return _ChunkedRows(self, client, consistency)
        return _StoreRows(self, client, store, consistency)

    def _ensure(self, client: Any, fingerprint: str, dim: int) -> None:
        """Create the collections if absent; never drop or alter existing ones; refuse a mismatch."""
        info = self.collection_info(client)
        if info is None:
            self._create(client, fingerprint, dim)
            return
        if info["schema"] is None or not client.has_collection(self.pages):
            raise IndexRefused(
                f"collection {self.collection!r} was not created by colqwen-pipeline: "
                "set COLQWEN_COLLECTION to a new name"
            )
        if info["schema"] != self.schema_version:
            raise IndexRefused(
                f"collection {self.collection!r} has index schema {info['schema']}, this version writes "
                f"{self.schema_version}: run `colqwen-pipeline ingest` or ingest_job (it rebuilds into new "
                "collections and switches over when complete) or set COLQWEN_COLLECTION to a new name"
            )
        if info["dim"] != dim or info["fingerprint"] != fingerprint:
            raise IndexRefused(
                f"collection {self.collection!r} holds embeddings of {info['fingerprint']} (dim {info['dim']}); "
                f"refusing to add {fingerprint} (dim {dim}): run `colqwen-pipeline ingest` or ingest_job (it "
                "rebuilds into a new collection and switches over when complete) or set"
                " COLQWEN_COLLECTION to a new name"
            )

    # -- writes ----------------------------------------------------------------------------------
    def replace_documents(self, documents: Sequence[DocumentRows], fingerprint: str, dim: int) -> dict[str, int]:
        """Many documents in one connection and few large inserts, each document still all-or-nothing
        for search: every document gets a new generation (its tokens into the store, fsync'd; then
        the pages rows of all documents; then their centroid rows), then its older generations are
        deleted. Returns tokens per doc_id."""
        rows = self._new_rows(documents, dim)
        with self.client() as client:
            store = self._prepare(client, fingerprint, dim)
            self._write_pages(client, store, rows)
            self._write_centroids(client, store, rows, dim)
            for doc in documents:
                self._settle(client, store, doc.doc_id, rows.generation)
        return {doc.doc_id: sum(len(page.vectors) for page in doc.pages) for doc in documents}

    def _prepare(self, client: Any, fingerprint: str, dim: int) -> TokenStore:
        """The collections (created if absent, refused if they do not fit) and their token store."""
        self._ensure(client, fingerprint, dim)
        self._load(client, self.pages, self.collection)
        store = self._store(self._existing_info(client))
        if store is None:  # _ensure refuses to write into schema 4
            raise IndexRefused(f"collection {self.collection!r} has no token store")
        return store

    def _write_pages(self, client: Any, store: TokenStore, rows: NewRows) -> None:
        """The tokens (fsync'd), then the pages rows that point at them."""
        self._redraw_taken_uids(client, rows)
        records = self._append_tokens(store, rows)
        try:
            insert_rows(client, self.pages, rows.page_rows(records), lambda r: len(r["image"]) + 512)
        except BaseException:
            store.retire(records)  # no row points at them: the scan must not offer them
            raise

    def _write_centroids(self, client: Any, store: TokenStore, rows: NewRows, dim: int) -> None:
        """After the pages rows: a centroid row never points at a page that is not fully written."""
        first_stage.for_index(self, client, store, CONSISTENCY).write(rows, dim)

    def _append_tokens(self, store: TokenStore, rows: NewRows) -> list[int]:
        """Tokens before rows: a crash leaves only bytes no row references (``reclaim``)."""
        pairs = zip(rows.pages, rows.centroids, strict=True)
        return store.append([NewPage(uid, doc.doc_id, page.vectors, c) for (doc, page, uid), c in pairs])

    def delete_document(self, doc_id: str) -> None:
        """Every row of the document, centroid rows first (search never meets half a page), then
        its tokens are retired in the store."""
        with self.client() as client:
            if client.has_collection(self.collection):
                self._load(client, self.pages, self.collection)
                reader = self._rows(client, self._existing_info(client))
                records = reader.records(f"doc_id == {literal(doc_id)}")
                for name in (self.collection, self.pages):
                    client.delete(name, filter=f"doc_id == {literal(doc_id)}")
                reader.retire(records)

    def _new_rows(self, documents: Sequence[DocumentRows], dim: int) -> NewRows:
        """A new generation (k-means centroids per page), computed before a connection opens: a Lite
        file stays locked only for the writes."""
        for doc in documents:
            check_shapes(doc.doc_id, doc.pages, dim, doc.document)
        generation = new_generation()  # unique to this call, so one per document written here
        pages = [(doc, page, secrets.randbits(54)) for doc in documents for page in doc.pages]
        centroids = [page_centroids(page.vectors, self.centroids_per_page) for _, page, _ in pages]
        return NewRows(pages, centroids, generation)

    def _redraw_taken_uids(self, client: Any, rows: NewRows) -> None:
        """A 54-bit clash with a stored page: draw again (random ids need no coordination)."""
        for i in self._taken(client, [uid for _, _, uid in rows.pages]):
            doc, page, _ = rows.pages[i]
            rows.pages[i] = (doc, page, self._new_page_uids(client, 1)[0])

    def _settle(self, client: Any, store: TokenStore | None, doc_id: str, written: str) -> None:
        """After writing generation ``written`` of a document, keep only its newest generation. Two
        writers of one document (the sensor and the nightly reindex on a server, which has no file
        lock) may interleave: each deletes the generations older than the newest it sees, its own
        included when it lost, so they converge on one copy instead of deleting each other's
        (issue 20: all pages rows gone, 24 orphan centroid rows left). "Older than" by value, not
        a list of what was seen, so centroid rows of any older generation go too (a loser's,
        written after its pages were deleted) and a newer writer's rows never do."""
        generations = self._row_generations(client, self.pages, doc_id) | {written}
        newest_generation = max(generations)
        if len(generations) == 1:  # a first write, unraced: nothing older to delete (the usual case)
            return
        expression = f"doc_id == {literal(doc_id)} and generation < {literal(newest_generation)}"
        retired = [row["record"] for row in self._rows_where(client, expression, ["record"])]
        client.delete(self.collection, filter=expression)  # centroid rows first: never a half page
        client.delete(self.pages, filter=expression)
        if store is not None:
            store.retire(retired)  # after the rows: a record is retired only once nothing points at it

    def _new_page_uids(self, client: Any, count: int) -> list[int]:
        """Random 54-bit page ids, re-drawn if taken (random ids need no coordination between writers)."""
        uids = [secrets.randbits(54) for _ in range(count)]
        for i in self._taken(client, uids):
            uids[i] = self._new_page_uids(client, 1)[0]
        return uids

    def _taken(self, client: Any, uids: list[int]) -> list[int]:
        """Positions of ``uids`` that already name a stored page."""
        if not uids:
            return []
        clashes = {row["id"] for row in self._get(client, self.pages, uids, ["page"])}
        return [i for i, uid in enumerate(uids) if uid in clashes]

    def _rows_where(self, client: Any, expression: str, fields: list[str]) -> list[dict]:
        rows = client.query(self.pages, filter=expression, output_fields=fields, limit=MAX_REQUEST_ROWS)
        if len(rows) == MAX_REQUEST_ROWS:  # a huge document: page through all of it
            rows = list(self._iterate(client, self.pages, expression, fields))
        return rows

    def _row_generations(self, client: Any, name: str, doc_id: str) -> set[str]:
        return {row["generation"] for row in self._rows_where(client, f"doc_id == {literal(doc_id)}", ["generation"])}

    def check(self, thorough: bool = False) -> dict[str, int]:
        """Open (and close) a client: an unreachable server or a bad token raises here, in one line.
        ``thorough``: centroid rows per document whose generation has no pages rows (search cannot
        score them); it also reclaims the token store's orphan records (``reclaim``)."""
        with self.client() as client:
            if not thorough:
                return {}
            self.reclaim()
            if not client.has_collection(self.collection):
                return {}
            self._load(client, self.pages, self.collection)
            reader = self._rows(client, self._existing_info(client))
            pages = {
                (r["doc_id"], r["generation"]) for r in self._iterate(client, self.pages, reader.heads, _GEN_FIELDS)
            }
            orphans: dict[str, int] = {}
            for row in self._iterate(client, self.collection, "id >= 0", _GEN_FIELDS):
                if (row["doc_id"], row["generation"]) not in pages:
                    orphans[row["doc_id"]] = orphans.get(row["doc_id"], 0) + 1
        return orphans

    def reclaim(self, older_than_s: float = RECLAIM_AGE_S) -> int:
        """Retire the token store records that no pages row references (a crash between a write's
        tokens and its rows) once older than ``older_than_s`` (a writer may still be between the
        two), and delete segments holding no live record. Returns records retired."""
        with self.client() as client:
            if not client.has_collection(self.collection):
                return 0
            self._load(client, self.pages)
            store = self._store(self._existing_info(client))
            if store is None:
                return 0
            referenced = {row["record"] for row in self._iterate(client, self.pages, "id >= 0", ["record"])}
            return store.reclaim(referenced, older_than_s)

    # -- reads -----------------------------------------------------------------------------------
    def token_counts_by_document(self, doc_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Token vectors stored per document (all, or those of ``doc_ids``), over every generation on disk."""
        if doc_ids is not None and not doc_ids:
            return {}
        with self.client() as client:
            if not client.has_collection(self.pages):
                return {}
            self._load(client, self.pages)
            heads = self._rows(client, self._existing_info(client)).heads
            expression = f"{heads} and doc_id in {quote(doc_ids)}" if doc_ids else heads
            counts: dict[str, int] = {}
            for row in self._iterate(client, self.pages, expression, ["doc_id", "n_tokens"]):
                counts[row["doc_id"]] = counts.get(row["doc_id"], 0) + row["n_tokens"]
            return dict(sorted(counts.items()))

    def document_ids(self) -> set[str]:
        with self.client() as client:
            if not client.has_collection(self.pages):
                return set()
            self._load(client, self.pages)
            heads = self._rows(client, self._existing_info(client)).heads
            return {row["doc_id"] for row in self._iterate(client, self.pages, heads, ["doc_id"])}

    def page_rows(self, doc_id: str) -> list[dict]:
        """One dict per stored page of the document: page, page_sha256, n_tokens, generation (sorted)."""
        with self.client() as client:
            if not client.has_collection(self.pages):
                return []
            self._load(client, self.pages)
            heads = self._rows(client, self._existing_info(client)).heads
            fields = ["page", "page_sha256", "n_tokens", "generation"]
            rows = self._iterate(client, self.pages, f"doc_id == {literal(doc_id)} and {heads}", fields)
            return sorted(({k: row[k] for k in fields} for row in rows), key=lambda r: (r["page"], r["generation"]))

    def _load(self, client: Any, *names: str) -> None:
        """A reopened collection starts released; loading is idempotent. Load only what a call
        needs: loading the pages of a large Lite file costs seconds."""
        for name in names:
            load_once(client, name)

    def _iterate(self, client: Any, name: str, expression: str, fields: list[str]) -> Iterator[dict]:
        iterator = client.query_iterator(name, batch_size=4096, filter=expression, output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def _get(
        self, client: Any, name: str, ids: list[int], fields: list[str], consistency: str = CONSISTENCY
    ) -> list[dict]:
        """Rows by primary key, in requests under the result and message caps."""
        rows: list[dict] = []
        for start in range(0, len(ids), MAX_GET_IDS):
            batch = ids[start : start + MAX_GET_IDS]
            rows += client.get(name, ids=batch, output_fields=fields, consistency_level=consistency)
        return rows

    # -- search (two_stage ranks; first_stage proposes; _StoreRows / _ChunkedRows read) -----------
    def search(
        self,
        queries: Sequence[np.ndarray],
        top_k: int = 5,
        doc_ids: Sequence[str] | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Top-k pages per query: centroids first stage, exact MaxSim over the candidates (two_stage)."""
        wanted = max(candidates or self.candidates, top_k)
        with self.client() as client:
            info = self.collection_info(client)
            if info is None:
                return [[] for _ in queries]
            self._load(client, self.pages)
            reader = self._rows(client, info, self.search_consistency)
            stage = first_stage.for_index(self, client, reader.store, self.search_consistency)
            return two_stage.search(stage, reader, queries, top_k, doc_ids, wanted, self.exact_share)

    def exact_search(
        self, queries: Sequence[np.ndarray], top_k: int = 5, doc_ids: Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Brute force: MaxSim over every stored page (for fidelity checks; slow at scale)."""
        with self.client() as client:
            if not client.has_collection(self.pages):
                return [[] for _ in queries]
            self._load(client, self.pages)
            return two_stage.exact_search(self._rows(client, self._existing_info(client)), queries, top_k, doc_ids)

    def _dim(self, client: Any) -> int:
        info = self.collection_info(client)
        if info and info["dim"]:
            return info["dim"]
        description = client.describe_collection(self.pages)
        return next(f["params"]["dim"] for f in description["fields"] if f["name"] == "vector")


def token_error_per_token(bits: int) -> float:
    return max(2.0**-10, 3 * 0.3 / ((1 << (bits - 1)) - 1) / 12**0.5)


def default_token_dir(uri: str, home: Path | None = None) -> Path:
    """Beside a Lite file (``milvus.db`` -> ``milvus.db.tokens``); for a server, a folder of this
    machine's state named after the URI."""
    if "://" not in uri:
        path = Path(uri).resolve()
        return path.with_name(path.name + ".tokens")
    safe = "".join(c if c.isalnum() else "_" for c in uri.split("://", 1)[1])
    return (home or Path("var").resolve()) / "index-tokens" / safe


class _StoreRows:
    """Pages of a schema-5 collection (``two_stage.PageSource``): one row a page by primary key,
    its tokens read from the token store (page cache, no anonymous memory)."""

    heads = "id >= 0"  # every row is a page

    def __init__(self, index: MilvusIndex, client: Any, store: SegmentStore, consistency: str):
        self.index, self.client, self.store, self.consistency = index, client, store, consistency

    def page_uids(self, doc_ids: Sequence[str] | None) -> list[int]:
        expression = self.heads + (f" and doc_id in {quote(doc_ids)}" if doc_ids else "")
        rows = self.index._iterate(self.client, self.index.pages, expression, ["doc_id", "page", "generation"])
        return [row["id"] for row in newest(rows)]

    def fetch(self, uids: list[int]) -> dict[int, StoredPage]:
        """The pages that exist among ``uids`` (a dead or crashed record has no row); a row whose
        record holds another page or another token count is an error, never a wrong score."""
        if not uids:
            return {}
        rows = self.index._get(self.client, self.index.pages, uids, ROW_FIELDS, self.consistency)
        rows = newest(rows)
        tokens = self.store.read([row["record"] for row in rows])
        pages = {}
        for row, (page_uid, vectors) in zip(rows, tokens, strict=True):
            if page_uid != row["id"] or len(vectors) != row["n_tokens"]:
                raise IndexRefused(
                    f"{row['doc_id']} page {row['page']}: token store record {row['record']} holds "
                    f"{len(vectors)} tokens of page {page_uid}, the row expects {row['n_tokens']} of {row['id']}"
                )
            pages[row["id"]] = StoredPage(
                row["id"], row["doc_id"], row["document"], int(row["page"]), row["page_sha256"],
                row["generation"], row["image"], vectors,
            )  # fmt: skip
        return pages

    def records(self, expression: str) -> list[int]:
        return [row["record"] for row in self.index._rows_where(self.client, expression, ["record"])]

    def retire(self, records: list[int]) -> None:
        self.store.retire(records)


class _ChunkedRows:
    """Pages of a schema-4 collection (read only, until a rebuild switches over): a few rows a
    page, fp16 tokens packed in base64 chunks, fetched by primary key (page_uid << ROW_BITS | chunk)."""

    heads = "chunk == 0"
    store = None

    def __init__(self, index: MilvusIndex, client: Any, consistency: str):
        self.index, self.client, self.consistency = index, client, consistency

    def page_uids(self, doc_ids: Sequence[str] | None) -> list[int]:
        expression = self.heads + (f" and doc_id in {quote(doc_ids)}" if doc_ids else "")
        heads = self.index._iterate(
            self.client, self.index.pages, expression, ["page_uid", "doc_id", "page", "generation"]
        )
        return [row["page_uid"] for row in newest(heads)]

    def fetch(self, uids: list[int]) -> dict[int, StoredPage]:
        """A page whose rows come back incomplete is an error, never a silently wrong score."""
        if not uids:
            return {}
        index, client = self.index, self.client
        first = [uid << ROW_BITS | c for uid in uids for c in range(FIRST_FETCH_CHUNKS)]
        rows = index._get(client, index.pages, first, CHUNK_FIELDS, self.consistency)
        by_page: dict[int, list[dict]] = {}
        for row in rows:
            by_page.setdefault(row["page_uid"], []).append(row)
        rest = [
            uid << ROW_BITS | c for uid, got in by_page.items() for c in range(FIRST_FETCH_CHUNKS, got[0]["n_chunks"])
        ]
        for row in index._get(client, index.pages, rest, CHUNK_FIELDS, self.consistency):
            by_page[row["page_uid"]].append(row)
        dim = implied_dim(by_page.values()) or index._dim(client)  # no describe call per query
        keep = [row["page_uid"] for row in newest(got[0] for got in by_page.values())]
        return {uid: chunked_page(uid, by_page[uid], dim) for uid in keep}

    def records(self, expression: str) -> list[int]:
        return []

    def retire(self, records: list[int]) -> None:
        """Nothing: schema 4 keeps its tokens in its rows."""
