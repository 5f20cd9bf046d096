"""The page manifest: what the rasteriser wrote for one document, read by the next stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from colqwen_pipeline.errors import PipelineError

MANIFEST_NAME = "manifest.json"


class DocumentError(PipelineError):
    """A document that cannot be rasterised. ``str(error)`` is one line naming file and cause."""


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
        return cls(**data)
