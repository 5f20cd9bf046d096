"""The stamp a document's last stage leaves beside its embeddings: which file (size, mtime, content
hash) its index rows were made from, and their version. Planning reads only this file per document:
a ``stat`` and one small read tell whether every stage of a document is current."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

INDEX_STAMP = "index.json"  # beside the embeddings: replaced (so invalid) whenever they are


@dataclass(frozen=True)
class IndexStamp:
    version: str  # versions.document_version of the file content below
    tokens: int
    source_size: int = -1
    source_mtime_ns: int = -1
    source_sha256: str = ""

    def matches(self, stat: os.stat_result) -> bool:
        return (self.source_size, self.source_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    def write(self, directory: Path) -> None:
        tmp = directory / f".{INDEX_STAMP}.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(directory / INDEX_STAMP)


def read_stamp(directory: Path) -> IndexStamp | None:
    """The stamp, or None when there is none or it cannot be read (then: the document needs a run)."""
    try:
        value = json.loads((directory / INDEX_STAMP).read_bytes())
        return IndexStamp(**value) if isinstance(value, dict) else None
    except (OSError, ValueError, TypeError):
        return None
