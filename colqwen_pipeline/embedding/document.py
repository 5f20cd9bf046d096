"""Embed documents' rendered pages, serving unchanged pages without a model forward.

A page's vectors come, in order of preference, from the Redis cache, from the document's
previous artifact (same model fingerprint and pixel hash: re-materialising an unchanged document
costs no forward even without Redis), or from the model, loaded only if some page needs it.

Three steps, so that the pages of many documents share model batches: ``plan_embedding`` per
document (what is already known), ``embed_missing`` once for many documents (one
``embed_images`` call, batched by visual-token count across documents), ``finish_embedding`` per
document (write the artifact, fill the cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact, write_artifact
from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.embedder import Embedder
from colqwen_pipeline.embedding.identity import ModelIdentity
from colqwen_pipeline.embedding.validate import TokenCounts, valid_vectors

Log = Callable[[str], None]


@dataclass
class PendingEmbedding:
    """One document between planning and writing: the vectors known so far, and what is missing."""

    pages_dir: Path
    out_dir: Path
    manifest: Manifest
    vectors: list[np.ndarray | None]
    cache_keys: list[str]
    not_in_cache: list[int]
    version: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> list[int]:
        return [i for i, v in enumerate(self.vectors) if v is None]

    def missing_paths(self) -> list[Path]:
        return [self.pages_dir / self.manifest.pages[i].file for i in self.missing]


def _previous_vectors(out_dir: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """sha256 -> vectors of the last artifact, if it was made by the same model and they are valid."""
    previous = EmbeddingArtifact.read_or_none(out_dir)
    if previous is None or previous.fingerprint != fingerprint:
        return {}
    reused = {}
    for i, page in enumerate(previous.pages):
        vectors = np.array(previous.page_vectors(i))
        if valid_vectors(vectors, previous.dim):
            reused[page["sha256"]] = vectors
    return reused


def _wrong_counts(vectors: list[np.ndarray | None], manifest: Manifest, counts: TokenCounts | None) -> list[int]:
    """Pages whose known vectors are not as many as the processor makes of them."""
    if counts is None:
        return []
    pages = manifest.pages
    return [
        i for i, v in enumerate(vectors) if v is not None and not counts.matches(v, (pages[i].width, pages[i].height))
    ]


def plan_embedding(
    pages_dir: Path,
    out_dir: Path,
    identity: ModelIdentity,
    cache: EmbeddingCache | None,
    version: str = "",
    counts: Callable[[], TokenCounts | None] = lambda: None,
) -> PendingEmbedding:
    """What is known of the document's pages; ``counts`` (called only if a page's vectors were found)
    checks each found page's token count, and a mismatch is a miss (dropped from the cache)."""
    manifest = Manifest.read(pages_dir)
    keys = [cache.image_key(p.sha256) for p in manifest.pages] if cache else []
    hits_before, misses_before = (cache.hits, cache.misses) if cache else (0, 0)
    vectors: list[np.ndarray | None] = cache.get_many(keys) if cache else [None] * len(manifest.pages)
    found = counts() if any(v is not None for v in vectors) else None
    if cache and (wrong := _wrong_counts(vectors, manifest, found)):  # vectors are found only in a cache
        cache.drop([keys[i] for i in wrong])
        cache.hits -= len(wrong)
        cache.misses += len(wrong)
        for i in wrong:
            vectors[i] = None
    not_in_cache = [i for i, v in enumerate(vectors) if v is None]
    previous = _previous_vectors(out_dir, identity.fingerprint) if not_in_cache else {}
    for i in not_in_cache:
        vectors[i] = previous.get(manifest.pages[i].sha256)
    for i in _wrong_counts(vectors, manifest, counts() if any(vectors[i] is not None for i in not_in_cache) else None):
        vectors[i] = None  # an old artifact's page of the wrong count: embedded again
    pending = PendingEmbedding(pages_dir, out_dir, manifest, vectors, keys, not_in_cache, version)
    pending.stats = {
        "cache_enabled": bool(cache and cache.enabled),
        "cache_hits": (cache.hits - hits_before) if cache else 0,
        "cache_misses": (cache.misses - misses_before) if cache else 0,
        "pages_embedded": len(pending.missing),
        "pages_reused_from_artifact": len(not_in_cache) - len(pending.missing),
    }
    return pending


def embed_missing(embedder: Embedder, documents: Sequence[PendingEmbedding], log: Log) -> dict[str, Any]:
    """Every missing page of ``documents`` in one ``embed_images`` call: pages of different
    documents share batches. Returns forward-only figures."""
    owners = [(doc, i) for doc in documents for i in doc.missing]
    paths = [doc.pages_dir / doc.manifest.pages[i].file for doc, i in owners]
    forwards, backoffs = embedder.stats.forward_calls, embedder.stats.oom_backoffs
    embedder.stats.batch_size_used = 0
    reset_peak_gpu_memory(embedder.identity)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done == total or done % (embedder.batch_size * 8) < embedder.batch_size:
            log(f"embedded {done}/{total} pages")

    fresh = embedder.embed_images(paths, progress=progress) if paths else []
    seconds = time.perf_counter() - started
    for (doc, i), vectors in zip(owners, fresh, strict=True):
        doc.vectors[i] = vectors
    return {
        "pages_forwarded": len(paths),
        "model_forwards": embedder.stats.forward_calls - forwards,
        "batch_size": embedder.batch_size,
        "batch_size_used": embedder.stats.batch_size_used,
        "oom_backoffs": embedder.stats.oom_backoffs - backoffs,
        "forward_seconds": round(seconds, 3),
        "forward_pages_per_s": round(len(paths) / seconds, 3) if seconds > 0 else 0.0,
        "peak_gpu_mem_mb": peak_gpu_memory_mb(embedder.identity),
    }


def finish_embedding(
    pending: PendingEmbedding, identity: ModelIdentity, cache: EmbeddingCache | None
) -> EmbeddingArtifact:
    if pending.missing:
        raise ValueError(f"{pending.out_dir.name}: pages {pending.missing[:5]} were never embedded")
    if cache:
        cache.set_many(
            {pending.cache_keys[i]: v for i in pending.not_in_cache if (v := pending.vectors[i]) is not None}
        )
    pages = [
        {"page": p.page, "sha256": p.sha256, "image": str(pending.pages_dir / p.file)} for p in pending.manifest.pages
    ]
    vectors = [v for v in pending.vectors if v is not None]
    return write_artifact(
        pending.out_dir, vectors, pages, identity.fingerprint, identity.dim, identity.random_weights, pending.version
    )


def identity_metadata(identity: ModelIdentity) -> dict[str, Any]:
    return {
        "device": identity.device,
        "precision": identity.precision,
        "attention": identity.attention,
        "max_visual_tokens": identity.max_visual_tokens,
        "fingerprint": identity.fingerprint,
        "random_weights": identity.random_weights,
        "served_by": identity.served_by or "this process",
    }


def embed_document(
    pages_dir: Path,
    out_dir: Path,
    identity: ModelIdentity,
    get_embedder: Callable[[], Embedder],
    cache: EmbeddingCache | None = None,
    log: Log = lambda _: None,
) -> tuple[EmbeddingArtifact, dict[str, Any]]:
    """One document on its own (the bulk engine batches many): artifact plus throughput metadata."""
    started = time.perf_counter()
    pending = plan_embedding(pages_dir, out_dir, identity, cache)
    forward: dict[str, Any] = {"model_forwards": 0, "batch_size_used": 0, "oom_backoffs": 0, "forward_seconds": 0.0}
    if pending.missing:
        total = len(pending.manifest.pages)
        log(f"embedding {len(pending.missing)} of {total} pages ({total - len(pending.missing)} reused)")
        forward = embed_missing(get_embedder(), [pending], log)
    artifact = finish_embedding(pending, identity, cache)
    seconds = time.perf_counter() - started
    return artifact, {
        "pages": len(artifact.pages),
        "tokens": artifact.total_tokens,
        **pending.stats,
        **forward,
        "seconds": round(seconds, 3),
        "pages_per_s": round(len(artifact.pages) / seconds, 3) if seconds > 0 else 0.0,
        **identity_metadata(identity),
    }


def reset_peak_gpu_memory(identity: ModelIdentity) -> None:
    if identity.local_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(identity.device)


def peak_gpu_memory_mb(identity: ModelIdentity) -> float | None:
    """Only for a CUDA device of this process: a model server's GPU is not ours to read."""
    if not identity.local_cuda:
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(identity.device) / 2**20, 1)
