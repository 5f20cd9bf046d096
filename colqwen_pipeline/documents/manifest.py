"""The page manifest: what the rasteriser wrote for one document, read by the next stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from colqwen_pipeline.common.errors import PipelineError

MANIFEST_NAME = "manifest.json"
MAX_SKIPPED_SHOWN = 5  # skipped pages named in a summary line; the manifest lists them all


class DocumentError(PipelineError):
    """A document that cannot be rasterised. ``str(error)`` is one line naming file and cause;
    ``renderers_tried``: the PDF renderers asked before giving up (data for the corpus check)."""

    def __init__(self, message: str, renderers_tried: list[str] | None = None) -> None:
        super().__init__(message)
        self.renderers_tried = list(renderers_tried or [])


@dataclass(frozen=True)
class PageRecord:
    page: int  # 1-based
    file: str  # PNG file name inside the document's page directory
    width: int
    height: int
    dpi: float
    renderer: str  # "pypdfium2", "pdf2image", "pillow", "libreoffice+pypdfium2", ...
    sha256: str  # hash of the raw RGB pixels (plus size): the embedding cache key


@dataclass(frozen=True)
class SkippedPage:
    page: int  # 1-based
    reason: str  # why every renderer failed on it, e.g. "pypdfium2: ...; pdf2image: ..."


@dataclass(frozen=True)
class Manifest:
    source: str  # absolute path of the source document
    source_sha256: str
    kind: str  # "pdf", "image", "office"
    pages: list[PageRecord]
    # Set by the bulk engine (bulk/versions.py): what the pages depend on, and the source file's
    # size and mtime when it was hashed (unchanged size and mtime: no need to hash it again).
    version: str = ""
    source_size: int = -1
    source_mtime_ns: int = -1
    # Pages no renderer could draw (a partial document, COLQWEN_ALLOW_PARTIAL), and which renderers
    # were asked to draw something (more than one: the fallback was used).
    skipped: list[SkippedPage] = field(default_factory=list)
    renderers_tried: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.skipped

    def summary(self) -> str:
        """``2 of 3 pages rendered; skipped: 2 (reason)``: one line for logs, metadata and checks."""
        line = f"{len(self.pages)} of {len(self.pages) + len(self.skipped)} pages rendered"
        if not self.skipped:
            return line
        shown = ", ".join(f"{s.page} ({s.reason})" for s in self.skipped[:MAX_SKIPPED_SHOWN])
        more = f", … and {len(self.skipped) - MAX_SKIPPED_SHOWN} more" if len(self.skipped) > MAX_SKIPPED_SHOWN else ""
        return f"{line}; skipped: {shown}{more}"

    def write(self, directory: Path) -> Path:
        """Atomically: a reader sees the old manifest or the new one."""
        path = directory / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        data = json.loads((directory / MANIFEST_NAME).read_text())
        data["pages"] = [PageRecord(**p) for p in data["pages"]]
        data["skipped"] = [SkippedPage(**p) for p in data.get("skipped", [])]
        return cls(**data)
