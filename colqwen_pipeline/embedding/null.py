"""An instant embedder, for benchmarks only: what the pipeline costs when the model costs nothing.

``bench ingest --model null`` points ``COLQWEN_MODEL`` at a *null model*: a copy of the tiny
model's folder (its config and processor, so the identity, the token counts and every check work
as for a real model) marked as null. ``registry.get_embedder`` gives a ``NullEmbedder`` for it
instead of loading weights: each page gets as many vectors as the processor makes of its size
(what the embedding check and the cache validation expect), each a unit vector, without a forward
pass. Its fingerprint is its own (the marker is part of the folder's revision), so its vectors
never mix with a real model's in the cache or the index. Its scores mean nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colqwen_pipeline.embedding.embedder import EmbedStats, IdentifiedModel, PageImage, Progress, page_size
from colqwen_pipeline.embedding.identity import ModelIdentity

NULL_MARKER = "colqwen_pipeline_null_embedder.json"


def build_null_model(directory: Path, tiny_model: Path) -> Path:
    """The null model at ``directory``, made from the tiny model's folder."""
    shutil.copytree(tiny_model, directory, dirs_exist_ok=True)
    (directory / NULL_MARKER).write_text(json.dumps({"null_embedder": True, "for": "benchmarks only"}))
    return directory


def is_null_model(directory: str | Path) -> bool:
    return (Path(directory) / NULL_MARKER).is_file()


class NullEmbedder(IdentifiedModel):
    """The ``Embedder`` interface with no model behind it: unit vectors, as many as a real forward gives."""

    def __init__(self, identity: ModelIdentity, batch_size: int = 4):
        from colqwen_pipeline.embedding.validate import token_counts

        self.identity, self.batch_size, self.stats = identity, batch_size, EmbedStats()
        counts = token_counts(identity, 0)  # the processor alone: no weights
        assert counts is not None  # a null model is always local
        self.counts = counts

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size

    def embed_images(self, pages: Sequence[PageImage], progress: Progress | None = None) -> list[np.ndarray]:
        vectors = [self._unit_vectors(self.counts.expected(page_size(page)), np.float16) for page in pages]
        self.stats.pages += len(pages)
        if progress:
            progress(len(pages), len(pages))
        return vectors

    def embed_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        processor = self.counts.processor
        tokens = [len(processor.process_queries([query])["input_ids"][0]) for query in queries]
        self.stats.queries += len(queries)
        return [self._unit_vectors(count, np.float32) for count in tokens]

    def _unit_vectors(self, count: int, dtype: type) -> np.ndarray:
        self.stats.tokens += count
        vectors: np.ndarray = np.zeros((count, self.dim), dtype=dtype)
        vectors[:, 0] = 1
        return vectors
