"""Content-addressed embedding cache in Redis.

Keys combine a hash of the model fingerprint (model, revision, precision, visual-token cap) with
the content hash, so a model change never serves stale vectors:
``cache:embed:image:{model}:{page pixel sha256}`` and ``cache:embed:text:{model}:{query sha256}``.
Values are raw fp16 bytes (tokens x dim): 4x smaller than JSON floats and decoded without parsing.
Redis being down never stops the pipeline: the first failure is logged once per process and
the cache stays off for ``RETRY_AFTER_S`` (no 2 s connect timeout paid per document).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from colqwen_pipeline.embedding.validate import valid_vectors

log = logging.getLogger(__name__)
RETRY_AFTER_S = 60.0

_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}  # one connection pool per (url, password) and process
_down_until: dict[str, float] = {}
_warned: set[str] = set()


def model_key(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def _client(url: str, password: str) -> Any:
    import redis

    with _lock:
        if (url, password) not in _clients:
            extra = {"password": password} if password else {}
            _clients[(url, password)] = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, **extra)
        return _clients[(url, password)]


class EmbeddingCache:
    """Counts answered lookups as hits and misses; an empty ``url`` gives a disabled cache that finds nothing."""

    def __init__(self, url: str, fingerprint: str, dim: int, ttl_s: int = 86400, password: str = ""):
        self.url, self.dim, self.ttl_s = url, dim, ttl_s
        self.model_key = model_key(fingerprint)
        self.hits = self.misses = 0
        self._client = _client(url, password) if url else None

    @property
    def enabled(self) -> bool:
        return self._client is not None and _down_until.get(self.url, 0.0) <= time.monotonic()

    def image_key(self, page_sha256: str) -> str:
        return f"cache:embed:image:{self.model_key}:{page_sha256}"

    def text_key(self, text: str) -> str:
        return f"cache:embed:text:{self.model_key}:{hashlib.sha256(text.encode()).hexdigest()}"

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """fp16 arrays (tokens, dim) for the keys found, None for the rest."""
        values = self._call(lambda c: c.mget(list(keys))) if keys else None
        if values is None:  # disabled or unreachable: nothing was looked up, so nothing is counted
            return [None] * len(keys)
        arrays = [self._decode(v) for v in values]
        junk = [key for key, value, array in zip(keys, values, arrays, strict=True) if value and array is None]
        if junk:  # a corrupt or foreign value: a miss now, and gone so it cannot come back
            log.warning("dropping %d invalid cache value(s), e.g. %s", len(junk), junk[0])
            self._call(lambda c: c.delete(*junk))
        found = sum(a is not None for a in arrays)
        self.hits += found
        self.misses += len(keys) - found
        return arrays

    def drop(self, keys: Sequence[str]) -> None:
        """Values found wrong by a check the cache cannot make itself (a page's token count)."""
        if keys:
            log.warning("dropping %d cache value(s) of the wrong token count, e.g. %s", len(keys), keys[0])
            self._call(lambda c: c.delete(*keys))

    def set_many(self, items: dict[str, np.ndarray]) -> None:
        """Only valid vectors are written: a NaN from a broken forward never becomes a cache hit."""
        items = {key: array for key, array in items.items() if valid_vectors(array, self.dim)}
        if not items:
            return

        def write(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            for key, array in items.items():
                pipe.set(key, np.ascontiguousarray(array, dtype=np.float16).tobytes(), ex=self.ttl_s)
            return pipe.execute()

        self._call(write)

    def _decode(self, value: bytes | None) -> np.ndarray | None:
        if value is None or len(value) == 0 or len(value) % (2 * self.dim):
            return None  # absent, or written by something else: treat as a miss
        array = np.frombuffer(value, dtype=np.float16).reshape(-1, self.dim)
        return array if valid_vectors(array, self.dim) else None

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        if not self.enabled:
            return None
        import redis

        try:
            return operation(self._client)
        except (redis.RedisError, OSError) as error:
            _down_until[self.url] = time.monotonic() + RETRY_AFTER_S
            if self.url not in _warned:
                _warned.add(self.url)
                log.warning("Redis cache at %s unavailable (%s): continuing without the cache", redact(self.url), error)
            return None


def redact(url: str) -> str:
    """Never log a password that sits in the URL."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
