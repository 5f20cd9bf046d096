"""Bulk reindex: every inbox document through every stage in one process (one model load),
each document isolated so a broken one fails alone and the rest complete."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from colqwen_pipeline import stages
from colqwen_pipeline.documents.manifest import DocumentError
from colqwen_pipeline.inbox import inbox_files
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DocumentOutcome:
    key: str
    document: str
    error: str = ""
    pages: int = 0
    tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def index_document(
    settings: Settings, key: str, say: Callable[[str], None] = log.info, index: MilvusIndex | None = None
) -> DocumentOutcome:
    """Rasterise, embed and index one document; any failure becomes the outcome's one-line error."""
    document = stages.describe_source(settings, key)["relative_path"]
    started = time.perf_counter()
    try:
        manifest = stages.rasterize_stage(settings, key, log=say)
        _, metrics = stages.embed_stage(settings, key, log=say)
        tokens = stages.index_stage(settings, key, index)
    except DocumentError as error:
        return DocumentOutcome(key, document, error=str(error))
    except Exception as error:  # noqa: BLE001 - one document must not take down the others
        log.exception("indexing %s failed", document)
        return DocumentOutcome(key, document, error=f"{document}: {type(error).__name__}: {error}".splitlines()[0])
    metrics["seconds_total"] = round(time.perf_counter() - started, 3)
    return DocumentOutcome(key, document, pages=len(manifest.pages), tokens=tokens, metrics=metrics)


def reindex_all(settings: Settings, say: Callable[[str], None] = log.info) -> Iterator[DocumentOutcome]:
    """Yield each document's outcome. When the model or the index schema changed since the live
    collection was built, everything goes into a new collection and search switches over only once
    it is complete, so the index is never empty or mixed during the rebuild."""
    from colqwen_pipeline.embedding.service import model_identity

    live = stages.make_index(settings)
    fingerprint = model_identity(settings).fingerprint
    reason = live.rebuild_reason(fingerprint) if isinstance(live, MilvusIndex) else None
    rebuilding = reason is not None
    target = live.rebuild_target(fingerprint) if rebuilding else live
    if rebuilding:
        say(f"{reason}: rebuilding into {target.collection}")
    documents = inbox_files(settings.inbox)
    failed = []
    for number, key in enumerate(documents, 1):
        say(f"[{number}/{len(documents)}] {documents[key].relative_to(settings.inbox)}")
        outcome = index_document(settings, key, say, target)
        failed += [] if outcome.ok else [key]
        yield outcome
    if rebuilding:
        _switch_if_complete(live, fingerprint, set(failed), say)


def _switch_if_complete(live: MilvusIndex, fingerprint: str, failed: set[str], say: Callable[[str], None]) -> None:
    """Switch unless a document that the live index serves failed: better stale than missing."""
    lost = failed & live.document_ids()
    if lost:
        say(f"not switching to {fingerprint}: {len(lost)} indexed document(s) failed to rebuild: {sorted(lost)[:5]}")
        return
    live.switch_to(fingerprint)
    say(f"search now uses {fingerprint}")
