"""Embed one document's rendered pages, serving unchanged pages without a model forward.

A page's vectors come, in order of preference, from the Redis cache, from the document's
previous artifact (same model fingerprint and pixel hash: re-materialising an unchanged document
costs no forward even without Redis), or from the model, loaded only if some page needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact, write_artifact
from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.embedder import Embedder
from colqwen_pipeline.embedding.loading import ModelIdentity

Log = Callable[[str], None]


def _previous_vectors(out_dir: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """sha256 -> vectors of the last artifact, if it was made by the same model."""
    try:
        previous = EmbeddingArtifact.read(out_dir)
    except (OSError, ValueError, KeyError):
        return {}
    if previous.fingerprint != fingerprint:
        return {}
    return {page["sha256"]: np.array(previous.page_vectors(i)) for i, page in enumerate(previous.pages)}


def embed_document(
    pages_dir: Path,
    out_dir: Path,
    identity: ModelIdentity,
    get_embedder: Callable[[], Embedder],
    cache: EmbeddingCache | None = None,
    log: Log = lambda _: None,
) -> tuple[EmbeddingArtifact, dict[str, Any]]:
    """Write the document's embeddings artifact and return it with throughput metadata."""
    manifest = Manifest.read(pages_dir)
    started = time.perf_counter()
    keys = [cache.image_key(p.sha256) for p in manifest.pages] if cache else []
    hits_before, misses_before = (cache.hits, cache.misses) if cache else (0, 0)
    vectors = cache.get_many(keys) if cache else [None] * len(manifest.pages)
    not_in_cache = [i for i, v in enumerate(vectors) if v is None]
    previous = _previous_vectors(out_dir, identity.fingerprint) if not_in_cache else {}
    for i in not_in_cache:
        vectors[i] = previous.get(manifest.pages[i].sha256)
    missing = [i for i, v in enumerate(vectors) if v is None]
    embed_stats: dict[str, Any] = {"model_forwards": 0, "batch_size_used": 0, "oom_backoffs": 0, "embed_seconds": 0.0}
    if missing:
        log(f"embedding {len(missing)} of {len(manifest.pages)} pages ({len(manifest.pages) - len(missing)} reused)")
        embed_stats = _embed_pages(get_embedder(), [pages_dir / manifest.pages[i].file for i in missing], log)
        for i, fresh in zip(missing, embed_stats.pop("vectors"), strict=True):
            vectors[i] = fresh
    if cache:
        cache.set_many({keys[i]: vectors[i] for i in not_in_cache})
    pages = [{"page": p.page, "sha256": p.sha256, "image": str(pages_dir / p.file)} for p in manifest.pages]
    artifact = write_artifact(out_dir, vectors, pages, identity.fingerprint, identity.dim, identity.random_weights)
    seconds = time.perf_counter() - started
    return artifact, {
        "pages": len(pages),
        "tokens": artifact.total_tokens,
        "pages_embedded": len(missing),
        "pages_reused_from_artifact": len(not_in_cache) - len(missing),
        "cache_enabled": bool(cache and cache.enabled),
        "cache_hits": (cache.hits - hits_before) if cache else 0,
        "cache_misses": (cache.misses - misses_before) if cache else 0,
        **embed_stats,
        "seconds": round(seconds, 3),
        "pages_per_s": round(len(pages) / seconds, 3) if seconds > 0 else 0.0,
        "device": identity.device,
        "precision": identity.precision,
        "attention": identity.attention,
        "max_visual_tokens": identity.max_visual_tokens,
        "fingerprint": identity.fingerprint,
        "random_weights": identity.random_weights,
    }


def _embed_pages(embedder: Embedder, paths: list[Path], log: Log) -> dict[str, Any]:
    forwards, backoffs = embedder.stats.forward_calls, embedder.stats.oom_backoffs
    embedder.stats.batch_size_used = 0
    reset_peak_gpu_memory(embedder.device)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        log(f"embedded {done}/{total} pages")

    fresh = embedder.embed_images(paths, progress=progress)
    seconds = time.perf_counter() - started
    return {
        "vectors": fresh,
        "model_forwards": embedder.stats.forward_calls - forwards,
        "batch_size": embedder.batch_size,
        "batch_size_used": embedder.stats.batch_size_used,
        "oom_backoffs": embedder.stats.oom_backoffs - backoffs,
        "embed_seconds": round(seconds, 3),
        "embed_pages_per_s": round(len(paths) / seconds, 3) if seconds > 0 else 0.0,
        "peak_gpu_mem_mb": peak_gpu_memory_mb(embedder.device),
    }


def reset_peak_gpu_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_memory_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
