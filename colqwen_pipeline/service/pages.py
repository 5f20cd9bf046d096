"""Page images for HTTP: a (doc_id, page) pair resolved to a file through the index and the manifest.

Nothing a client sends becomes part of a path: the doc_id must have the shape of a document key and be a
document of the index, the page a number within the manifest's pages, and the file the one the manifest
names, found inside the state directory. Everything else is a 404 (400 for a malformed page number).
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from colqwen_pipeline.documents.manifest import Manifest, PageRecord
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.service.limits import Refused
from colqwen_pipeline.settings import Settings

DOC_ID = re.compile(r"[a-z0-9._-]{1,80}-[0-9a-f]{8}")  # inbox.document_key's shape
MIN_WIDTH, MAX_WIDTH = 16, 2400
INDEX_IDS_TTL_S = 5.0  # a page of thumbnails asks for the same ids many times in a second


@dataclass(frozen=True)
class ResolvedPage:
    doc_id: str
    record: PageRecord
    path: Path


class DocumentIds:
    """The index's document ids, re-read at most every few seconds."""

    def __init__(self, read: Callable[[], set[str]]):
        self._read, self._at = read, float("-inf")
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._at > INDEX_IDS_TTL_S:
                self._ids, self._at = self._read(), time.monotonic()
            return self._ids

    def forget(self) -> None:
        with self._lock:
            self._at = float("-inf")


class PageStore:
    def __init__(self, settings: Settings, indexed: Callable[[], set[str]]):
        self.pages_dir, self.embeddings_dir = settings.pages_dir.resolve(), settings.embeddings_dir.resolve()
        self.indexed = indexed

    def resolve(self, doc_id: str, page: int) -> ResolvedPage:
        if not DOC_ID.fullmatch(doc_id) or doc_id not in self.indexed():
            raise Refused(404, f"no indexed document {doc_id!r}")
        try:
            manifest = Manifest.read(self.pages_dir / doc_id)
        except (OSError, ValueError, KeyError, TypeError):
            raise Refused(404, f"{doc_id}: its page manifest is missing or unreadable (reindex it)") from None
        records = {record.page: record for record in manifest.pages}
        if page not in records:
            raise Refused(404, f"{doc_id} has no page {page} (pages: 1 to {max(records, default=0)})")
        record = records[page]
        path = (self.pages_dir / doc_id / record.file).resolve()
        if not path.is_relative_to(self.pages_dir / doc_id) or not path.is_file():
            raise Refused(404, f"{doc_id} page {page}: its image is missing (reindex it)")
        return ResolvedPage(doc_id, record, path)

    def stored_vectors(self, page: ResolvedPage) -> tuple[EmbeddingArtifact, int]:
        """The page's artifact and its index in it; 409 when the artifact is not of these pixels."""
        artifact = EmbeddingArtifact.read_or_none(self.embeddings_dir / page.doc_id)
        matches = [i for i, p in enumerate(artifact.pages if artifact else []) if p["page"] == page.record.page]
        if not artifact or not matches or artifact.pages[matches[0]]["sha256"] != page.record.sha256:
            raise Refused(409, f"{page.doc_id} page {page.record.page}: no embedding of this page image (reindex it)")
        return artifact, matches[0]


def check_width(width: int | None) -> int | None:
    if width is not None and not MIN_WIDTH <= width <= MAX_WIDTH:
        raise Refused(422, f"width must be between {MIN_WIDTH} and {MAX_WIDTH} pixels, not {width}")
    return width


def thumbnail_jpeg(path: Path, width: int) -> bytes:
    with Image.open(path) as image:
        width = min(width, image.width)  # never larger than the page itself
        height = max(1, round(image.height * width / image.width))
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()
