"""One loaded model per process, shared by every document and query that process embeds.

The model is loaded lazily: ``model_identity`` (the cache key) needs no weights, so a document
or query served entirely from the cache never pays for a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.embedder import Embedder, warm_up
from colqwen_pipeline.embedding.identity import ModelIdentity, ModelSpec, identify
from colqwen_pipeline.embedding.loading import load_model
from colqwen_pipeline.embedding.queries import encode_queries
from colqwen_pipeline.index.pooling import token_pooler
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
RANDOM_WEIGHTS_WARNING = (
    "RANDOM-WEIGHT TEST MODEL in use: embeddings and search scores are meaningless; set COLQWEN_MODEL "
    "to real ColQwen2.5 weights for real retrieval"
)

_lock = threading.Lock()
_identities: dict[ModelSpec, ModelIdentity] = {}
_loaded: dict[ModelSpec, Embedder] = {}  # at most one: a second model would double GPU memory
_load_count = 0


def model_spec(settings: Settings) -> ModelSpec:
    source = settings.model or str(ensure_tiny_model(settings.tiny_model_dir))
    return ModelSpec(
        source=source,
        base_model=settings.base_model,
        device=settings.device,
        precision=settings.precision,
        max_visual_tokens=settings.max_visual_tokens,
        token_pooling=settings.token_pooling,
    )


def ensure_tiny_model(directory: Path) -> Path:
    from colqwen_pipeline.embedding.tiny import build_tiny_model, is_tiny_model

    if not is_tiny_model(directory):
        log.info("building the tiny random-weight test model in %s", directory)
        build_tiny_model(directory)
    return directory


def model_identity(settings: Settings) -> ModelIdentity:
    """The fingerprint and facts of the configured model, without loading it (memoised)."""
    if settings.model_server_url:  # the model lives in `colqwen-pipeline serve`: its identity is the server's
        from colqwen_pipeline.embedding.remote import remote_embedder

        return remote_embedder(settings).identity
    spec = model_spec(settings)
    with _lock:
        if spec not in _identities:
            _identities[spec] = identify(spec)
        return _identities[spec]


def get_embedder(settings: Settings, batch_size: int | None = None) -> Embedder:
    """Load once per process and spec (warm-up included); later documents, runs and queries reuse it."""
    global _load_count
    if settings.model_server_url:  # remote mode: same interface, nothing loaded in this process
        from colqwen_pipeline.embedding.remote import remote_embedder

        return remote_embedder(settings)  # type: ignore[return-value]
    spec = model_spec(settings)
    with _lock:
        if spec not in _loaded:
            unload_locked()
            model, processor, identity = load_model(spec, settings.home_dir / "models" / "views")
            _identities[spec] = identity
            if identity.random_weights:
                log.warning(RANDOM_WEIGHTS_WARNING)
            embedder = Embedder(model, processor, identity, batch_size or settings.batch_size)
            warm_up(embedder)
            _loaded[spec] = embedder
            _load_count += 1
            log.info("model loaded: %s on %s (%s)", identity.fingerprint, identity.device, identity.precision)
        embedder = _loaded[spec]
    embedder.batch_size = batch_size or settings.batch_size
    embedder.mix_sizes = settings.embed_mix_page_sizes
    embedder.pooler = token_pooler(settings.token_pooling)
    return embedder


def unload() -> None:
    """Forget the loaded model (tests; a long-lived server switching models)."""
    with _lock:
        unload_locked()


def unload_locked() -> None:
    _loaded.clear()
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def loads_so_far() -> int:
    """How many times this process has loaded a model (tests pin 'one load for many documents')."""
    return _load_count


def open_cache(settings: Settings, identity: ModelIdentity) -> EmbeddingCache:
    return EmbeddingCache(
        settings.redis_url, identity.fingerprint, identity.dim, settings.cache_ttl_s, settings.redis_password
    )


def embed_queries_cached(settings: Settings, queries: Sequence[str]) -> tuple[list[np.ndarray], EmbeddingCache]:
    """Query multi-vectors through ``encode_queries``; the model loads only on a cache miss."""
    cache = open_cache(settings, model_identity(settings))
    vectors, _ = encode_queries(cache, lambda texts: get_embedder(settings).embed_queries(texts), queries)
    return vectors, cache
