"""What a stored multi-vector must look like before anything reads or writes it: 2-d, the model's
dimension, at least one token, finite, and unit-norm within fp16's rounding. Vectors from Redis or
an old artifact that fail are a cache miss (and are re-derived), never scored or copied on."""

from __future__ import annotations

import numpy as np

NORM_TOLERANCE = 0.02  # fp16 storage moves a unit vector's norm by < 0.002; garbage by far more


def valid_vectors(vectors: np.ndarray | None, dim: int, tolerance: float = NORM_TOLERANCE) -> bool:
    if vectors is None or vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) == 0:
        return False
    values = np.asarray(vectors, dtype=np.float32)
    if not np.isfinite(values).all():
        return False
    return bool(np.abs(np.linalg.norm(values, axis=1) - 1.0).max() <= tolerance)
