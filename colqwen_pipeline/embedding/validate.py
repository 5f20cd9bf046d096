"""What a stored multi-vector must look like before anything reads or writes it: 2-d, the model's
dimension, at least one token, finite, unit-norm within fp16's rounding, and (for a page) as many
tokens as the processor makes of it. Vectors from Redis or an old artifact that fail are a cache
miss (and are re-derived), never scored or copied on."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

NORM_TOLERANCE = 0.02  # fp16 storage moves a unit vector's norm by < 0.002; garbage by far more


def valid_vectors(vectors: np.ndarray | None, dim: int, tolerance: float = NORM_TOLERANCE) -> bool:
    if vectors is None or vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) == 0:
        return False
    values = np.asarray(vectors, dtype=np.float32)
    if not np.isfinite(values).all():
        return False
    return bool(np.abs(np.linalg.norm(values, axis=1) - 1.0).max() <= tolerance)


class TokenCounts:
    """How many token vectors the model makes of a page of a given size: the image prompt's text
    tokens plus one per merged patch (pooled: at most that over the pool factor). Vectors of any
    other count, from Redis or an old artifact, are not this page's embedding, however valid each
    vector looks; the processor alone tells, no weights are needed."""

    def __init__(self, processor: Any, pool_factor: int = 0):
        from PIL import Image

        self.processor, self.pool_factor = processor, pool_factor
        self.merge_size = int(processor.image_processor.merge_size)
        ids = processor.process_images([Image.new("RGB", (64, 64), "white")])["input_ids"][0]
        self.prompt = int(len(ids) - (ids == processor.image_token_id).sum())

    def expected(self, size: tuple[int, int]) -> int:
        n_x, n_y = self.processor.get_n_patches(size, spatial_merge_size=self.merge_size)
        return self.prompt + n_x * n_y

    def matches(self, vectors: np.ndarray, size: tuple[int, int]) -> bool:
        expected = self.expected(size)
        if self.pool_factor >= 2:
            return 1 <= len(vectors) <= max(expected // self.pool_factor, 1)
        return len(vectors) == expected


_counts: dict[tuple[str, int], TokenCounts] = {}
_counts_lock = threading.Lock()


def token_counts(identity: Any, pool_factor: int) -> TokenCounts | None:
    """The page token counts of ``identity``'s processor, loaded once per process (no weights);
    None for a model held by a model server (its processor is not here)."""
    if identity.served_by:
        return None
    with _counts_lock:
        if (identity.fingerprint, pool_factor) not in _counts:
            from colqwen_pipeline.embedding.compat import ensure_torchvision
            from colqwen_pipeline.embedding.identity import hub_offline
            from colqwen_pipeline.embedding.loading import _processor_source

            ensure_torchvision()
            from colpali_engine.models import ColQwen2_5_Processor

            processor = ColQwen2_5_Processor.from_pretrained(
                _processor_source(identity),
                max_num_visual_tokens=identity.max_visual_tokens,
                local_files_only=identity.local or hub_offline(),
            )
            _counts[(identity.fingerprint, pool_factor)] = TokenCounts(processor, pool_factor)
        return _counts[(identity.fingerprint, pool_factor)]
