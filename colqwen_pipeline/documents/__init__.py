"""Documents -> page images: type sniffing, PDF/image/office rendering in guarded workers.

Public API: ``rasterize_document`` (see render.py), ``DocumentError``, ``Manifest``, ``PageRecord``.
``rasterize_document`` is imported lazily so that the render worker, which lives in this package,
starts without pydantic/settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from colqwen_pipeline.documents.manifest import DocumentError, Manifest, PageRecord

if TYPE_CHECKING:
    from colqwen_pipeline.documents.render import rasterize_document

__all__ = ["DocumentError", "Manifest", "PageRecord", "rasterize_document"]


def __getattr__(name: str) -> Any:
    if name == "rasterize_document":
        from colqwen_pipeline.documents.render import rasterize_document

        return rasterize_document
    raise AttributeError(name)
