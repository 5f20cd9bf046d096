"""Content-addressed embedding cache in Redis.

Keys combine the model fingerprint with the content hash, so a model change never serves stale
vectors: ``cache:embed:image:{model}:{page sha256}`` and ``cache:embed:text:{model}:{sha256}``.
Values are raw fp16 bytes (tokens x dim), 4x smaller than JSON floats and parsed for free.
Redis being down never stops the pipeline: the cache warns once and turns itself off.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def _model_key(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


class EmbeddingCache:
    def __init__(self, url: str, fingerprint: str, dim: int, ttl_s: int = 86400):
        self.url, self.dim, self.ttl_s = url, dim, ttl_s
        self.model_key = _model_key(fingerprint)
        self.hits = self.misses = 0
        self._client = None
        self._warned = False
        if url:
            import redis

            self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def image_key(self, page_sha256: str) -> str:
        return f"cache:embed:image:{self.model_key}:{page_sha256}"

    def text_key(self, text: str) -> str:
        return f"cache:embed:text:{self.model_key}:{hashlib.sha256(text.encode()).hexdigest()}"

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        values = self._call(lambda c: c.mget(list(keys))) if keys else None
        if values is None:
            self.misses += len(keys)
            return [None] * len(keys)
        arrays = [self._decode(v) for v in values]
        found = sum(a is not None for a in arrays)
        self.hits += found
        self.misses += len(keys) - found
        return arrays

    def set_many(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return

        def write(client):
            pipe = client.pipeline(transaction=False)
            for key, array in items.items():
                pipe.set(key, np.asarray(array, dtype=np.float16).tobytes(), ex=self.ttl_s)
            return pipe.execute()

        self._call(write)

    def _decode(self, value: bytes | None) -> np.ndarray | None:
        if value is None or len(value) % (2 * self.dim):
            return None
        return np.frombuffer(value, dtype=np.float16).reshape(-1, self.dim).astype(np.float32)

    def _call(self, operation):
        if self._client is None:
            return None
        import redis

        try:
            return operation(self._client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            if not self._warned:
                log.warning("Redis cache at %s unreachable (%s): continuing without the cache", _redact(self.url), error)
                self._warned = True
            self._client = None
            return None


def _redact(url: str) -> str:
    """Never log a password that sits in the URL."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
