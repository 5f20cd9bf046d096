"""What every index strategy offers the pipeline: the interface, and the values that cross it.

A strategy (today: ``milvus.MilvusIndex``, centroids first stage + exact MaxSim, on Milvus Lite
or a server) implements every method; the engine, search, the checks and the HTTP server use
nothing else.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from colqwen_pipeline.common.errors import PipelineError


class IndexRefused(PipelineError):
    """Refused write or unreachable index; one clear line."""


@dataclass(frozen=True)
class PageRows:
    """What the index needs of one page."""

    page: int  # 1-based
    sha256: str
    vectors: np.ndarray  # (tokens, dim), unit-norm
    image: str  # path of the rendered page


@dataclass(frozen=True)
class DocumentRows:
    """One document as the index writes it."""

    doc_id: str
    document: str  # path relative to the inbox
    pages: Sequence[PageRows]


@dataclass(frozen=True)
class Hit:
    doc_id: str
    document: str
    page: int
    score: float
    image_path: str

    def as_dict(self) -> dict[str, Any]:
        """The result format of `search --json` and the HTTP /search."""
        return {
            "doc_id": self.doc_id,
            "document": self.document,
            "page": self.page,
            "score": round(self.score, 4),
            "image_path": self.image_path,
        }


class DocumentIndex(ABC):
    """Pages of documents, written and replaced per document, searched by MaxSim.

    The whole contract (``test_index.py`` runs it on every backend): writes, search, the documents
    held, rebuilds for a new model or schema, and a health check. Nothing else of an index is used
    outside ``index/``."""

    collection: str  # the name search reads (shown in metadata)
    uri: str
    schema_version: str
    # How far a returned score may sit from exact MaxSim over the fp16 embeddings, per query token:
    # fp16 storage moves it by up to ~2^-10; a quantised store by more (index_fidelity allows it).
    score_error_per_token: float = 2.0**-10

    # -- writes: each document all-or-nothing for search, exactly one copy after a rewrite ---------
    @abstractmethod
    def replace_documents(self, documents: Sequence[DocumentRows], fingerprint: str, dim: int) -> dict[str, int]:
        """Write each document's pages, replacing any earlier copy; returns token vectors per doc_id."""

    def replace_document(
        self, doc_id: str, document: str, pages: Sequence[PageRows], fingerprint: str, dim: int
    ) -> int:
        return self.replace_documents([DocumentRows(doc_id, document, pages)], fingerprint, dim)[doc_id]

    @abstractmethod
    def delete_document(self, doc_id: str) -> None: ...

    # -- search ------------------------------------------------------------------------------------
    @abstractmethod
    def search(
        self,
        queries: Sequence[np.ndarray],
        top_k: int = 5,
        doc_ids: Sequence[str] | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Top-k pages per query (each page once, of the newest write of its document)."""

    @abstractmethod
    def exact_search(
        self, queries: Sequence[np.ndarray], top_k: int = 5, doc_ids: Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Brute-force MaxSim over every stored page (the fidelity check's reference)."""

    # -- the documents held ------------------------------------------------------------------------
    @abstractmethod
    def document_ids(self) -> set[str]: ...

    @abstractmethod
    def token_counts_by_document(self, doc_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Token vectors stored per document (all, or those of ``doc_ids``), over every copy on disk:
        a count above what was written means a second copy."""

    def count_tokens(self, doc_id: str | None = None) -> int:
        return sum(self.token_counts_by_document(None if doc_id is None else [doc_id]).values())

    # -- model and schema changes: rebuild beside the live index, then switch -----------------------
    @abstractmethod
    def live_fingerprint(self) -> str | None: ...

    @abstractmethod
    def rebuild_reason(self, fingerprint: str) -> str | None:
        """Why the live index cannot take ``fingerprint``'s embeddings, or None."""

    @abstractmethod
    def rebuild_target(self, fingerprint: str) -> DocumentIndex:
        """The index a rebuild for ``fingerprint`` writes into (not yet searched)."""

    @abstractmethod
    def switch_to(self, fingerprint: str) -> None:
        """Make the rebuilt index of ``fingerprint`` the searched one, in one step."""

    # -- health ------------------------------------------------------------------------------------
    @abstractmethod
    def check(self, thorough: bool = False) -> dict[str, int]:
        """Raise IndexRefused (one line) when the index cannot be reached or opened. ``thorough``
        also reads every row and returns, per document, the rows no search can reach (left by a
        crashed or raced write; the next write of the document removes them); otherwise {}."""

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """Keep one connection across calls (a long-lived searcher); by default, nothing to keep."""
        yield self
