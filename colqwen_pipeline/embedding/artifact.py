"""One embeddings artifact per document: fp16 token vectors of all pages plus offsets.

Layout (a directory, replaced atomically):
  vectors.npy  float16 [total_tokens, dim], memory-mapped by readers
  pages.json   {"fingerprint", "dim", "random_weights", "pages": [{"page", "sha256", "offset", "count", "image"}]}
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.common.atomic import replace_dir


@dataclass(frozen=True)
class EmbeddingArtifact:
    directory: Path
    fingerprint: str
    dim: int
    pages: list[dict[str, Any]]
    random_weights: bool = False
    version: str = ""  # bulk/versions.py: the pages version and model it was made from

    @cached_property
    def vectors(self) -> np.ndarray:
        """Memory-mapped once: no copy of the whole document in RAM, no re-open per page."""
        return np.load(self.directory / "vectors.npy", mmap_mode="r")

    def page_vectors(self, index: int) -> np.ndarray:
        page = self.pages[index]
        return self.vectors[page["offset"] : page["offset"] + page["count"]]

    @property
    def total_tokens(self) -> int:
        return sum(p["count"] for p in self.pages)

    @classmethod
    def read_or_none(cls, directory: Path) -> EmbeddingArtifact | None:
        """The artifact, or None when it is missing or unreadable (bad JSON, a truncated or deleted
        vectors.npy, offsets past its end): to every reader that is a cache miss to re-derive."""
        try:
            artifact = cls.read(directory)
            vectors = artifact.vectors
            ends = [p["offset"] + p["count"] for p in artifact.pages]
            if vectors.ndim != 2 or vectors.shape[1] != artifact.dim or max(ends, default=0) > len(vectors):
                return None
            return artifact
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def read(cls, directory: Path) -> EmbeddingArtifact:
        meta = json.loads((directory / "pages.json").read_text())
        return cls(
            directory,
            meta["fingerprint"],
            meta["dim"],
            meta["pages"],
            meta.get("random_weights", False),
            meta.get("version", ""),
        )


def write_artifact(
    directory: Path,
    page_vectors: list[np.ndarray],
    pages: list[dict[str, Any]],
    fingerprint: str,
    dim: int,
    random_weights: bool = False,
    version: str = "",
) -> EmbeddingArtifact:
    """Write atomically: a crash leaves either the old artifact or the new one, never half."""
    counts = [len(v) for v in page_vectors]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
    records = [p | {"offset": o, "count": c} for p, o, c in zip(pages, offsets, counts, strict=True)]
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        stacked = np.concatenate(page_vectors) if page_vectors else np.zeros((0, dim))
        np.save(tmp / "vectors.npy", stacked.astype(np.float16))
        meta = {
            "fingerprint": fingerprint,
            "dim": dim,
            "random_weights": random_weights,
            "version": version,
            "pages": records,
        }
        (tmp / "pages.json").write_text(json.dumps(meta, indent=1))
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EmbeddingArtifact.read(directory)
