"""One document at a time, free of Dagster: the index factory, search, removal, and each stage on
its own (for scripts and tests). Runs of many documents go through ``bulk.engine`` instead.

raw document -> page images (pages/<key>/) -> embeddings (embeddings/<key>/) -> Milvus rows.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from colqwen_pipeline.common.document_locks import document_locks
from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_name, file_sha256, find_document, readable
from colqwen_pipeline.index import make_index
from colqwen_pipeline.index.base import DocumentIndex, Hit, PageRows
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
Log = Callable[[str], None]


def describe_source(settings: Settings, key: str) -> dict[str, Any]:
    path = find_document(settings.inbox, key)
    return {
        "path": readable(str(path.resolve())),
        "relative_path": document_name(settings.inbox, path),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def rasterize_stage(settings: Settings, key: str, log: Log = log.info) -> Manifest:
    from colqwen_pipeline.documents import rasterize_document

    path = find_document(settings.inbox, key)
    return rasterize_document(path, settings.pages_dir / key, settings, log=log)


def embed_stage(settings: Settings, key: str, log: Log = log.info) -> tuple[EmbeddingArtifact, dict[str, Any]]:
    """The model loads only if a page is in neither the Redis cache nor the previous artifact."""
    from colqwen_pipeline.embedding.document import embed_document
    from colqwen_pipeline.embedding.registry import get_embedder, model_identity, open_cache

    identity = model_identity(settings)
    cache = open_cache(settings, identity)
    return embed_document(
        settings.pages_dir / key, settings.embeddings_dir / key, identity, lambda: get_embedder(settings), cache, log
    )


def index_stage(settings: Settings, key: str, index: DocumentIndex | None = None) -> int:
    """Replace the document's rows in Milvus with its current embeddings; returns token vectors indexed."""
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / key)
    document = document_name(settings.inbox, find_document(settings.inbox, key))
    pages = [
        PageRows(p["page"], p["sha256"], artifact.page_vectors(i), p["image"]) for i, p in enumerate(artifact.pages)
    ]
    index = index or make_index(settings)
    return index.replace_document(key, document, pages, artifact.fingerprint, artifact.dim)


def remove_document(settings: Settings, key: str, index: DocumentIndex | None = None) -> None:
    """Forget a document everywhere: rows first, then artifacts (a crash leaves no orphan rows).

    Call it once the file is gone from the inbox: under the document's lock, so an ingest in another
    process either wrote before (and this removes it) or finds the file gone and writes nothing."""
    with document_locks(settings.home_dir, [key]):
        (index or make_index(settings)).delete_document(key)
        for directory in (settings.pages_dir / key, settings.embeddings_dir / key):
            shutil.rmtree(directory, ignore_errors=True)


def search(query: str, top_k: int = 5, settings: Settings | None = None, doc_ids: list[str] | None = None) -> list[Hit]:
    """Rank indexed pages for ``query`` by MaxSim. The Python API behind ``colqwen-pipeline search``."""
    settings = settings or Settings()
    from colqwen_pipeline.embedding.registry import embed_queries_cached

    vectors = embed_queries_cached(settings, [query])[0][0]  # cache:embed:text:...; loads the model on a miss
    return make_index(settings).search([vectors], top_k=top_k, doc_ids=doc_ids)[0]
