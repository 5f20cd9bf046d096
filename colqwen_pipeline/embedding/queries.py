"""The one way vectors go through the Redis cache, and the one query encoder built on it: search,
evaluate, the checks and the HTTP server score a query identically (cached or fresh, it is
rounded through fp16, the precision the cache and the index store)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from colqwen_pipeline.embedding.cache import EmbeddingCache

EmbedMissing = Callable[[list[int]], list[np.ndarray]]


def through_cache(
    cache: EmbeddingCache, keys: Sequence[str], embed_missing: EmbedMissing
) -> tuple[list[np.ndarray], int]:
    """Vectors for ``keys``: from the cache where present, else ``embed_missing(positions)``, whose
    results are then stored. Returns the vectors and the number of cache hits."""
    found = cache.get_many(keys)
    missing = [i for i, vectors in enumerate(found) if vectors is None]
    if missing:
        fresh = embed_missing(missing)
        for i, vectors in zip(missing, fresh, strict=True):
            found[i] = vectors
        cache.set_many({keys[i]: v for i in missing if (v := found[i]) is not None})
    return found, len(keys) - len(missing)  # type: ignore[return-value]


def encode_queries(
    cache: EmbeddingCache, embed: Callable[[list[str]], list[np.ndarray]], queries: Sequence[str]
) -> tuple[list[np.ndarray], int]:
    """Query multi-vectors (float32 holding fp16 values) and the cache hits; ``embed`` runs only
    for the queries the cache does not hold."""
    keys = [cache.text_key(query) for query in queries]
    vectors, hits = through_cache(cache, keys, lambda missing: embed([queries[i] for i in missing]))
    return [np.asarray(v, dtype=np.float16).astype(np.float32) for v in vectors], hits
