"""Optional compact storage: fewer vectors per page before they are stored (``COLQWEN_TOKEN_POOLING``).

colpali-engine's ``HierarchicalTokenPooler`` clusters a page's token vectors (Ward linkage on cosine
distance) into at most ``tokens // pool_factor`` clusters and keeps each cluster's normalised mean.
Its README reports that pool factor 3 keeps 97.8% of ViDoRe quality with 66.7% fewer vectors; that
figure is colpali's (measured with real weights), not ours: docs/search.md has what we measured on
synthetic pages. Queries are never pooled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class TokenPooler(ABC):
    """Turns each page's (tokens, dim) vectors into a (fewer, dim) set of unit vectors."""

    @property
    @abstractmethod
    def tag(self) -> str:
        """Part of the model fingerprint: pooled and unpooled vectors never share a cache or collection."""

    @abstractmethod
    def pool(self, pages: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class NoPooling(TokenPooler):
    """The default: every token vector is stored."""

    tag = ""

    def pool(self, pages: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(pages)


class HierarchicalPooling(TokenPooler):
    """colpali-engine's hierarchical token pooling with a pool factor (>= 2)."""

    def __init__(self, factor: int):
        if factor < 2:
            raise ValueError(f"token pool factor must be at least 2, not {factor}")
        self.factor = factor

    @property
    def tag(self) -> str:
        return f"pool{self.factor}"

    def pool(self, pages: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        from colqwen_pipeline.embedding.compat import ensure_torchvision

        ensure_torchvision()  # colpali_engine imports its models (and torchvision) on any import
        from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

        pooler = HierarchicalTokenPooler()
        pooled = []
        for page in pages:
            if len(page) < 2:  # the pooler refuses a single token; nothing to merge anyway
                pooled.append(page)
                continue
            tokens = torch.from_numpy(np.asarray(page, dtype=np.float32))
            out = pooler.pool_embeddings([tokens], pool_factor=self.factor)[0]
            pooled.append(out.numpy().astype(page.dtype, copy=False))
        return pooled


def token_pooler(factor: int) -> TokenPooler:
    """The pooler for a ``COLQWEN_TOKEN_POOLING`` value: 0 or 1 means off."""
    return NoPooling() if factor <= 1 else HierarchicalPooling(factor)
