"""What is already indexed, read from the stamps the engine writes: how the inbox sensor starts
from the index instead of an empty cursor (so a first ``dagster dev`` after a CLI ingest does not
re-ingest every document)."""

from __future__ import annotations

from colqwen_pipeline.bulk.engine import INDEX_STAMP
from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.inbox import inbox_files
from colqwen_pipeline.settings import Settings


def indexed_inbox_state(settings: Settings) -> dict[str, dict]:
    """Inbox state (the sensor's cursor format, see ``inbox_watch``) of every inbox document whose
    pages were rendered and whose embeddings were indexed: the size, mtime and hash recorded in its
    page manifest. A file touched since then is hashed by the next scan, and ingested if its content
    changed; documents never indexed (or that failed) are left out, so the scan sees them as new."""
    state = {}
    for key in inbox_files(settings.inbox):
        if not (settings.embeddings_dir / key / INDEX_STAMP).is_file():
            continue
        try:
            manifest = Manifest.read(settings.pages_dir / key)
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: let the scan treat it as new
            continue
        if manifest.source_size < 0 or manifest.source_mtime_ns < 0:
            continue
        state[key] = {
            "size": manifest.source_size,
            "mtime_ns": manifest.source_mtime_ns,
            "sha256": manifest.source_sha256,
            "pending": False,
        }
    return state
