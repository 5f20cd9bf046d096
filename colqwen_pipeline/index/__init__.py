"""The index: ``base.DocumentIndex`` is the interface, ``milvus.MilvusIndex`` the implementation
(``connection``: clients and Lite turn-taking; ``maxsim``: scoring; ``pooling``: token pooling;
``bench``/``peers``: the search benchmark)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from colqwen_pipeline.index.base import DocumentIndex
    from colqwen_pipeline.settings import Settings


def make_index(settings: Settings) -> DocumentIndex:
    """The configured index (Milvus Lite file, or a server by URI)."""
    from colqwen_pipeline.index.milvus import MilvusIndex

    return MilvusIndex.from_settings(settings)
