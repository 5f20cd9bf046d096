"""colqwen-pipeline: documents -> page images -> ColQwen2.5 multi-vectors -> Milvus, on Dagster.

Keep this module import-light: the render worker and the CLI import it at start-up. ``Index`` (the
Python API, ``colqwen_pipeline.api``) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from colqwen_pipeline.api import Index

__version__ = "0.1.0"
__all__ = ["Index", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from colqwen_pipeline.api import Index

        return Index
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
