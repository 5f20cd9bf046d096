"""The index: ``base.DocumentIndex`` is the interface; ``make_index`` returns the backend that
``COLQWEN_INDEX_BACKEND`` names. ``milvus.MilvusIndex`` (Milvus Lite file, or a server by URI);
``two_stage``: the search any page store can reuse; ``maxsim``: scoring; ``pooling``: token
pooling; ``bench``/``peers``: the search benchmark."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from colqwen_pipeline.index.base import DocumentIndex
    from colqwen_pipeline.settings import Settings


def _milvus(settings: Settings) -> DocumentIndex:
    from colqwen_pipeline.index.milvus import MilvusIndex

    return MilvusIndex.from_settings(settings)


# Each backend is a full DocumentIndex, built from the settings (imported only when chosen).
BACKENDS: dict[str, Callable[[Settings], DocumentIndex]] = {"milvus": _milvus}


def make_index(settings: Settings) -> DocumentIndex:
    """The configured index."""
    return BACKENDS[settings.index_backend](settings)
