"""The row format of the two Milvus collections: what a page becomes on write (a pages row that
points at its tokens in the token store, centroid rows), what it is read back as, the generations
that make a rewrite all-or-nothing, and expression literals. Schema 4's chunked rows (fp16 tokens
in VARCHAR) are still read, so that search serves an old index until its rebuild switches over."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from colqwen_pipeline.index.base import DocumentRows, IndexRefused, PageRows
from colqwen_pipeline.index.maxsim import packed_bytes, unpack_tokens
from colqwen_pipeline.index.milvus_schema import DOC_ID_BYTES, DOCUMENT_BYTES, IMAGE_BYTES, PLACEHOLDER
from colqwen_pipeline.index.two_stage import StoredPage

ROW_BITS = 8  # centroid key = page_uid << ROW_BITS | centroid (schema 4 chunks: page_uid << ROW_BITS | chunk)


@dataclass
class NewRows:
    """One generation's pages of some documents, before they are written: the centroids are
    computed before a connection opens (a Lite file stays locked only for the writes)."""

    pages: list[tuple[DocumentRows, PageRows, int]]  # (document, page, page uid)
    centroids: list[np.ndarray]  # per page, (<= centroids per page, dim)
    generation: str

    def page_rows(self, records: Sequence[int]) -> list[dict]:
        """One pages row per page, pointing at its record in the token store."""
        return [
            {"id": uid, "record": record, "vector": PLACEHOLDER}
            | page_fields(doc.doc_id, doc.document, page, self.generation)
            for (doc, page, uid), record in zip(self.pages, records, strict=True)
        ]

    def centroid_rows(self, dim: int) -> list[dict]:
        return [
            row
            for (doc, _, uid), centroids in zip(self.pages, self.centroids, strict=True)
            for row in centroid_rows(uid, doc.doc_id, centroids, self.generation, dim)
        ]


def literal(value: str) -> str:
    """A Milvus string literal. Non-ASCII stays as is (Milvus's parser rejects ``\\u00e9`` escapes);
    control characters cannot be expressed and are refused with one line."""
    if any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000 for c in value):
        raise IndexRefused(f"document id {value!r} holds a control character or a lone surrogate")
    return json.dumps(value, ensure_ascii=False)


def quote(values: Sequence[str]) -> str:
    """A Milvus list literal of strings."""
    return "[" + ", ".join(literal(v) for v in values) + "]"


def flat(rows: list[list[dict]]) -> list[dict]:
    return [row for page in rows for row in page]


def page_fields(doc_id: str, document: str, page: PageRows, generation: str) -> dict[str, Any]:
    """The per-page columns that every index strategy stores beside the vectors."""
    return {
        "doc_id": doc_id,
        "document": document,
        "page": page.page,
        "page_sha256": page.sha256,
        "generation": generation,
        "image": page.image,
        "n_tokens": len(page.vectors),
    }


def new_generation() -> str:
    """Sorts by time, so of two generations of a page the newest wins in search."""
    return f"{time.time_ns():020d}-{secrets.token_hex(8)}"


def check_shapes(doc_id: str, pages: Sequence[PageRows], dim: int, document: str = "") -> None:
    """Refuse, with one line, what the collections cannot hold, before anything of the write is sent:
    one bad document must not fail the others written with it."""
    _check_bytes(doc_id, "document id", doc_id, DOC_ID_BYTES)
    _check_bytes(doc_id, "path", document, DOCUMENT_BYTES)
    for page in pages:
        if page.vectors.ndim != 2 or page.vectors.shape[1] != dim:
            raise IndexRefused(_shape_error(doc_id, page, dim))
        _check_bytes(doc_id, f"page {page.page} image path", page.image, IMAGE_BYTES)


def _check_bytes(doc_id: str, what: str, value: str, limit: int) -> None:
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise IndexRefused(f"{doc_id}: {what} is {size} bytes in UTF-8, over the {limit} the index stores")


def _shape_error(doc_id: str, page: PageRows, dim: int) -> str:
    return f"{doc_id} page {page.page}: vectors of shape {page.vectors.shape}, expected (n, {dim})"


# -- schema 4, read only: a page's fp16 tokens in base64 chunks of its rows -------------------------
def implied_dim(pages: Iterable[list[dict]]) -> int | None:
    """The vector dimension that every fetched page with tokens implies (fp16 bytes / token count), or
    None when they disagree or there are none (the caller then asks the collection). ``stored_page``
    still checks each page against it."""
    implied = {
        sum(packed_bytes(row["tokens"]) for row in rows) / (2 * rows[0]["n_tokens"])
        for rows in pages
        if rows[0]["n_tokens"]
    }
    dim = float(implied.pop()) if len(implied) == 1 else 0.0
    return int(dim) if dim >= 1 and dim.is_integer() else None


def chunked_page(uid: int, rows: list[dict], dim: int) -> StoredPage:
    rows.sort(key=lambda r: r["chunk"])
    head = rows[0]
    if len(rows) != head["n_chunks"]:
        raise IndexRefused(f"{head['doc_id']} page {head['page']}: {len(rows)} of {head['n_chunks']} chunks found")
    chunks = [r["tokens"] for r in rows if r["tokens"]]
    found = sum(packed_bytes(chunk) for chunk in chunks) / (2 * dim)
    if found != head["n_tokens"]:
        raise IndexRefused(f"{head['doc_id']} page {head['page']}: {found:g} of {head['n_tokens']} tokens found")
    vectors = unpack_tokens(chunks, dim)
    return StoredPage(
        uid,
        head["doc_id"],
        head["document"],
        int(head["page"]),
        head["page_sha256"],
        head["generation"],
        head["image"],
        vectors,
    )


def newest(rows: Iterable[dict]) -> list[dict]:
    """Per page (doc_id, page), the row of its newest generation: between a re-ingest's write and
    its delete, two generations of a page exist and only the newest counts."""
    newest: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["doc_id"], row["page"])
        if key not in newest or row["generation"] > newest[key]["generation"]:
            newest[key] = row
    return list(newest.values())


def centroid_rows(uid: int, doc_id: str, centroids: np.ndarray, generation: str, dim: int) -> list[dict]:
    """A page's rows in the searched collection: its k-means centroids."""
    if not len(centroids):
        centroids = np.zeros((1, dim), dtype=np.float32)
    return [
        {"id": uid << ROW_BITS | k, "doc_id": doc_id, "generation": generation, "vector": vector}
        for k, vector in enumerate(np.asarray(centroids, dtype=np.float32))
    ]
