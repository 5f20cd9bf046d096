"""Turn page images and queries into multi-vectors of the model's family, using the accelerator well.

``Embedder`` is what the pipeline needs of any embedder: ``LocalEmbedder`` (the model in this
process, below) and ``remote.RemoteEmbedder`` (a client of ``serve``) both provide it.

- Batches hold pages of the *same* visual-token count only (queries: the same token count): the
  prompt is fixed, so equal visual tokens mean equal sequence lengths and no padding at all.
  Padding is what makes an embedding depend on its batch-mates (colpali issue 274;
  docs/benchmarks.md has the figures). Pages are sorted by token count, so a document of uniform
  pages still fills every batch.
- The next batch is pre-processed (decode, resize, patchify) on a CPU thread while the current
  one runs on the device.
- A CUDA out-of-memory error halves the batch and retries, down to one page, then gives up with
  a message that says what to change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.embedding.identity import ModelIdentity
from colqwen_pipeline.index.pooling import NoPooling, TokenPooler

log = logging.getLogger(__name__)
PageImage = Image.Image | Path
Progress = Callable[[int, int], None]


class EmbeddingError(PipelineError):
    """A page or query that cannot be embedded; the message says what to change."""


@dataclass
class EmbedStats:
    forward_calls: int = 0
    pages: int = 0
    queries: int = 0
    tokens: int = 0
    seconds: float = 0.0
    batch_size_used: int = 0  # the largest batch that actually ran
    oom_backoffs: int = 0


def load_page(page: PageImage) -> Image.Image:
    if isinstance(page, Image.Image):
        return page.convert("RGB")
    with Image.open(page) as image:
        return image.convert("RGB")


def page_size(page: PageImage) -> tuple[int, int]:
    """(width, height) from the file header only: sorting 2000 pages must not decode them."""
    if isinstance(page, Image.Image):
        return page.size
    with Image.open(page) as image:
        return image.size


def group_batches(keys: Sequence[int], size: int, mix_sizes: bool = False) -> list[list[int]]:
    """Indices sorted by key, cut into batches of at most ``size`` that share one key (unless mixing)."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < size and (mix_sizes or keys[current[0]] == keys[index]):
            current.append(index)
        else:
            batches.append([index])
    return batches


class Embedder(Protocol):
    """What the pipeline uses of an embedder, wherever its model runs."""

    identity: ModelIdentity
    batch_size: int
    stats: EmbedStats

    @property
    def info(self) -> dict[str, Any]: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def effective_batch_size(self) -> int: ...

    def embed_images(self, pages: Sequence[PageImage], progress: Progress | None = None) -> list[np.ndarray]:
        """One float16 array (tokens, dim) per page, in input order."""
        ...

    def embed_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """One float32 array (tokens, dim) per query."""
        ...


class IdentifiedModel:
    """The part of ``Embedder`` both implementations read from their model identity."""

    identity: ModelIdentity

    @property
    def info(self) -> dict[str, Any]:
        return self.identity.as_dict()

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def device(self) -> str:
        return self.identity.device


class LocalEmbedder(IdentifiedModel):
    """A loaded model + processor of one family. Holds no per-document state except ``stats``."""

    def __init__(self, model: Any, processor: Any, identity: ModelIdentity, batch_size: int = 4):
        self.model = model
        self.processor = processor
        self.identity = identity
        self.batch_size = batch_size
        self.mix_sizes = False  # COLQWEN_EMBED_MIX_PAGE_SIZES: pad instead (vectors then depend on batch-mates)
        self.pooler: TokenPooler = NoPooling()  # COLQWEN_TOKEN_POOLING (page vectors only)
        self.oom_cap: int | None = None  # largest batch known to fit, learnt from out-of-memory errors
        self.stats = EmbedStats()

    @property
    def effective_batch_size(self) -> int:
        return min(self.batch_size, self.oom_cap or self.batch_size)

    def patch_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(across, down) merged patches of a (width, height) page: one visual token each."""
        return self.identity.model_family.patch_grid(self.processor, size)

    def visual_tokens(self, page: PageImage) -> int:
        n_x, n_y = self.patch_grid(page_size(page))
        return n_x * n_y

    def embed_images(self, pages: Sequence[PageImage], progress: Progress | None = None) -> list[np.ndarray]:
        """One float16 array (tokens, dim) per page, in input order. Paths are decoded lazily, per batch."""
        sizes = [self.visual_tokens(p) for p in pages]
        batches = group_batches(sizes, self.effective_batch_size, self.mix_sizes)

        def prepare(indices: list[int]) -> Any:
            return self.processor.process_images([load_page(pages[i]) for i in indices])

        vectors = self.pooler.pool(self._run(batches, prepare, progress, np.float16))
        self.stats.pages += len(pages)
        return vectors

    def embed_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """One float32 array (tokens, dim) per query."""
        lengths = [len(self.processor.process_queries([q])["input_ids"][0]) for q in queries]  # tokens, cheap
        batches = group_batches(lengths, self.effective_batch_size, self.mix_sizes)

        def prepare(indices: list[int]) -> Any:
            return self.processor.process_queries([queries[i] for i in indices])

        vectors = self._run(batches, prepare, None, np.float32)
        self.stats.queries += len(queries)
        return vectors

    def _run(
        self, batches: list[list[int]], prepare: Callable[[list[int]], Any], progress: Progress | None, dtype: type
    ) -> list[np.ndarray]:
        results: dict[int, np.ndarray] = {}
        total, started = sum(len(b) for b in batches), time.perf_counter()
        queue = list(batches)
        if self.identity.local_cuda:
            prepare = _pinned(prepare)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess") as pool:
            pending: Future | None = pool.submit(prepare, queue[0]) if queue else None
            while queue and pending is not None:  # pending is the first batch of the queue
                batch, inputs = queue.pop(0), pending.result()
                # overlap: the CPU prepares the next batch while the device runs this one
                pending = pool.submit(prepare, queue[0]) if queue else None
                outputs = self._forward_or_none(inputs)
                if outputs is None:  # out of memory: halve the batch size and re-cut what is left
                    queue = self._recut_after_oom([batch, *queue])
                    pending = pool.submit(prepare, queue[0])
                    continue
                for index, vectors in zip(batch, outputs, strict=True):
                    results[index] = vectors.astype(dtype, copy=False)
                self.stats.batch_size_used = max(self.stats.batch_size_used, len(batch))
                self.stats.tokens += sum(len(v) for v in outputs)
                if progress:
                    progress(len(results), total)
        self.stats.seconds += time.perf_counter() - started
        return [results[i] for i in range(total)]

    def _forward_or_none(self, inputs: Any) -> list[np.ndarray] | None:
        """The batch's vectors, or None after a CUDA out-of-memory error (memory already released)."""
        import torch

        try:
            return self._forward(inputs)
        except torch.OutOfMemoryError:
            pass  # leave the except block first: its traceback pins the activations we want freed
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None

    def _recut_after_oom(self, remaining: list[list[int]]) -> list[list[int]]:
        failed = len(remaining[0])
        if failed == 1:
            raise EmbeddingError(
                f"one page with up to {self.identity.max_visual_tokens} visual tokens does not fit in {self.device} "
                "memory: lower COLQWEN_MAX_VISUAL_TOKENS, use COLQWEN_PRECISION=4bit or a larger GPU"
            )
        self.oom_cap = failed // 2  # kept for later documents too: the memory will not grow back
        self.stats.oom_backoffs += 1
        log.warning("CUDA out of memory with %d pages per batch: retrying with %d", failed, self.oom_cap)
        return [batch[i : i + self.oom_cap] for batch in remaining for i in range(0, len(batch), self.oom_cap)]

    def _forward(self, inputs: Any) -> list[np.ndarray]:
        import torch

        self.stats.forward_calls += 1
        device = self.model.device
        inputs = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            output = self.model(**inputs)
        mask = inputs["attention_mask"].bool()
        return [row[keep].float().cpu().numpy() for row, keep in zip(output, mask, strict=True)]


def _pinned(prepare: Callable[[list[int]], Any]) -> Callable[[list[int]], Any]:
    """Page-locked host tensors, so the copy to the GPU is asynchronous (done in the pre-processing thread)."""
    import torch

    def prepare_pinned(indices: list[int]) -> dict[str, Any]:
        inputs = prepare(indices)
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    return prepare_pinned


def warm_up(embedder: LocalEmbedder) -> None:
    """One small forward so the first real batch doesn't pay for lazy initialisation (kernels, caches)."""
    embedder.embed_images([Image.new("RGB", (224, 224), "white")])
    embedder.embed_queries(["warm-up"])
    embedder.stats = EmbedStats()
