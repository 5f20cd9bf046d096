"""The stamp a document's last stage leaves beside its embeddings: which file (size, mtime, content
hash) its index rows were made from, their version, and the size and mtime of each embedding file
it was written with. Planning reads only this file per document: a few ``stat`` calls and one small
read tell whether every stage of a document is current and its artifacts are as they were left."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

INDEX_STAMP = "index.json"  # beside the embeddings: replaced (so invalid) whenever they are


@dataclass(frozen=True)
class IndexStamp:
    version: str  # versions.document_version of the file content below
    tokens: int
    source_size: int = -1
    source_mtime_ns: int = -1
    source_sha256: str = ""
    artifacts: dict[str, list[int]] = field(default_factory=dict)  # file name -> [size, mtime_ns]

    def matches(self, stat: os.stat_result) -> bool:
        return (self.source_size, self.source_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    def artifacts_intact(self, directory: Path) -> bool:
        """Each embedding file as the stamp saw it: one deleted, truncated or rewritten since is not."""
        return bool(self.artifacts) and self.artifacts == artifact_stats(directory, self.artifacts)

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


def artifact_stats(directory: Path, names: Iterable[str] | None = None) -> dict[str, list[int]]:
    """[size, mtime_ns] of the embedding files in ``directory`` (all but the stamp, by default)."""
    if names is None:
        names = [p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
    stats = {}
    for name in names:
        if name == INDEX_STAMP:
            continue
        try:
            stat = (directory / name).stat()
        except OSError:
            continue
        stats[name] = [stat.st_size, stat.st_mtime_ns]
    return stats
