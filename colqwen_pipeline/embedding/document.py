"""Embed one document's rendered pages, serving unchanged pages from the cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact, write_artifact
from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.embedder import Embedder


def embed_document(
    pages_dir: Path,
    out_dir: Path,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[EmbeddingArtifact, dict[str, Any]]:
    """Write the document's embeddings artifact and return it with throughput figures."""
    manifest = Manifest.read(pages_dir)
    started = time.perf_counter()
    forward_before = embedder.stats.forward_calls
    embedder.stats.batch_size_used = 0
    keys = [cache.image_key(p.sha256) for p in manifest.pages] if cache else []
    cached = cache.get_many(keys) if cache else [None] * len(manifest.pages)
    missing = [i for i, vectors in enumerate(cached) if vectors is None]
    if missing:
        log(f"embedding {len(missing)} of {len(manifest.pages)} pages ({len(manifest.pages) - len(missing)} cached)")
        images = [Image.open(pages_dir / manifest.pages[i].file) for i in missing]

        def progress(done: int, total: int) -> None:
            log(f"embedded {done}/{total} pages")

        fresh = embedder.embed_images(images, progress=progress)
        for i, vectors in zip(missing, fresh):
            cached[i] = vectors
        if cache:
            cache.set_many({keys[i]: cached[i] for i in missing})
    pages = [{"page": p.page, "sha256": p.sha256, "image": str(pages_dir / p.file)} for p in manifest.pages]
    vectors: list[np.ndarray] = cached  # type: ignore[assignment]
    artifact = write_artifact(
        out_dir, vectors, pages, embedder.fingerprint, embedder.dim, embedder.info["random_weights"]
    )
    seconds = time.perf_counter() - started
    return artifact, {
        "pages": len(pages),
        "tokens": artifact.total_tokens,
        "pages_embedded": len(missing),
        "cache_hits": len(pages) - len(missing) if cache else 0,
        "cache_misses": len(missing) if cache else 0,
        "cache_enabled": bool(cache and cache.enabled),
        "model_forwards": embedder.stats.forward_calls - forward_before,
        "seconds": round(seconds, 3),
        "pages_per_s": round(len(pages) / seconds, 3) if seconds > 0 else 0.0,
        "batch_size": embedder.batch_size,
        "batch_size_used": embedder.stats.batch_size_used,
        "device": embedder.info["device"],
        "precision": embedder.info["precision"],
        "peak_gpu_mem_mb": _peak_gpu_mb(embedder.info["device"]),
        "fingerprint": embedder.fingerprint,
        "random_weights": embedder.info["random_weights"],
    }


def _peak_gpu_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
