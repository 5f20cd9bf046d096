"""Turn page images and queries into ColQwen2.5 multi-vectors, using the accelerator well.

Pages are sorted by visual-token count so a batch holds similar sizes (less padding); the next
batch is pre-processed on a CPU thread while the current one runs; a CUDA out-of-memory error
halves the batch and retries, down to one page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    forward_calls: int = 0
    pages: int = 0
    tokens: int = 0
    seconds: float = 0.0
    batch_size_used: int = 0
    oom_backoffs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Embedder:
    """A loaded model + processor. Holds no per-document state except ``stats``."""

    def __init__(self, model: Any, processor: Any, info: dict[str, Any], batch_size: int = 4):
        self.model = model
        self.processor = processor
        self.info = info
        self.batch_size = batch_size
        self.stats = EmbedStats()

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    @property
    def dim(self) -> int:
        return self.info["dim"]

    def visual_tokens(self, image: Image.Image) -> int:
        n_x, n_y = self.processor.get_n_patches(image.size, spatial_merge_size=self.model.spatial_merge_size)
        return n_x * n_y

    def embed_images(
        self, images: Sequence[Image.Image], progress: Callable[[int, int], None] | None = None
    ) -> list[np.ndarray]:
        """One float32 array (tokens, dim) per image, padding removed."""
        order = sorted(range(len(images)), key=lambda i: self.visual_tokens(images[i]))

        def prepare(indices: list[int]) -> tuple[list[int], Any]:
            return indices, self.processor.process_images([images[i] for i in indices])

        return self._run(order, prepare, progress)

    def embed_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        order = sorted(range(len(queries)), key=lambda i: len(queries[i]))

        def prepare(indices: list[int]) -> tuple[list[int], Any]:
            return indices, self.processor.process_queries([queries[i] for i in indices])

        return self._run(order, prepare, None)

    def _run(self, order: list[int], prepare: Callable, progress: Callable[[int, int], None] | None) -> list:
        import torch

        results: list[np.ndarray | None] = [None] * len(order)
        size, pos, started = self.batch_size, 0, time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess") as pool:
            pending = pool.submit(prepare, order[pos : pos + size]) if order else None
            while pos < len(order):
                indices, inputs = pending.result()
                following = pos + len(indices)
                if following < len(order):  # overlap: prepare the next batch while this one runs
                    pending = pool.submit(prepare, order[following : following + size])
                try:
                    outputs = self._forward(inputs)
                except torch.OutOfMemoryError:
                    if size == 1:
                        raise
                    size //= 2
                    self.stats.oom_backoffs += 1
                    log.warning("CUDA out of memory: retrying with batch size %d", size)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    pending = pool.submit(prepare, order[pos : pos + size])
                    continue
                for index, vectors in zip(indices, outputs):
                    results[index] = vectors
                pos = following
                self.stats.batch_size_used = max(self.stats.batch_size_used, len(indices))
                if progress:
                    progress(pos, len(order))
        self.stats.seconds += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def _forward(self, inputs: Any) -> list[np.ndarray]:
        import torch

        self.stats.forward_calls += 1
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            output = self.model(**inputs)
        mask = inputs["attention_mask"].bool()
        return [row[keep].float().cpu().numpy() for row, keep in zip(output, mask)]


def warm_up(embedder: Embedder) -> None:
    """One small forward so the first real batch doesn't pay for lazy initialisation."""
    embedder.embed_images([Image.new("RGB", (224, 224), "white")])
    embedder.embed_queries(["warm-up"])
    embedder.stats = EmbedStats()
