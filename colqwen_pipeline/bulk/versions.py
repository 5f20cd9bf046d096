"""What each stage's output depends on, as a short version string.

A stage is redone only when its version changes: the source file's content for the raw document;
that plus the render settings for the pages; that plus the model fingerprint for the embeddings;
that plus the index schema and physical collection for the Milvus rows. Bump a ``*_CODE`` constant
when a stage's code changes what it writes; these also serve as the assets' Dagster code versions.
"""

from __future__ import annotations

import hashlib
import json

from colqwen_pipeline.settings import Settings

RENDER_CODE = "2"  # 2: page-level fallback, partial documents (manifest.skipped)
EMBED_CODE = "1"
INDEX_CODE = "1"


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def render_settings(settings: Settings) -> dict[str, object]:
    """The settings that change the pixels of a page (not the ones that only refuse a file)."""
    return {
        "dpi": settings.dpi,
        "long_document_dpi": settings.long_document_dpi,
        "long_document_pages": settings.long_document_pages,
        "max_page_pixels": settings.max_page_pixels,
        "pdf_renderer": settings.pdf_renderer,
    }


def pages_version(source_sha256: str, settings: Settings) -> str:
    return _digest("pages", RENDER_CODE, source_sha256, json.dumps(render_settings(settings), sort_keys=True))


def embeddings_version(pages: str, fingerprint: str) -> str:
    return _digest("embeddings", EMBED_CODE, pages, fingerprint)


def index_version(embeddings: str, collection: str, schema: str, centroids_per_page: int) -> str:
    return _digest("index", INDEX_CODE, embeddings, collection, schema, str(centroids_per_page))


def document_version(source_sha256: str, settings: Settings, fingerprint: str, collection: str, schema: str) -> str:
    """The version of a document's index rows made from this file content: the last stage's version,
    so one comparison tells whether every stage of a document is current."""
    pages = pages_version(source_sha256, settings)
    embeddings = embeddings_version(pages, fingerprint)
    return index_version(embeddings, collection, schema, settings.index_centroids_per_page)


def context_digest(settings: Settings, fingerprint: str, collection: str, schema: str) -> str:
    """What every document's versions depend on besides its own file: a failure recorded under
    another context (a new model, render settings, index schema) no longer holds."""
    return _digest("context", document_version("", settings, fingerprint, collection, schema))
