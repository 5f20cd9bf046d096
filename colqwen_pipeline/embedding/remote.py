"""An embedder that calls model servers (`colqwen-pipeline serve`) instead of loading the model.

It has the interface of :class:`~colqwen_pipeline.embedding.embedder.Embedder`, so the document
embedding, the cache and the index work unchanged, and many pipeline processes share the loaded
models. With several servers (``servers.ServerPool``: balancing and failover), the requests of one
call run at once, one per server, so one ingest keeps every server busy. The wire format of the
vectors lives here too, because both sides must agree on it: ``float`` (JSON float lists, as the
original model server) or ``base64_fp16`` (row-major little-endian float16, tokens x dim: ~6x
smaller than JSON and exactly what the artifact stores).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import mimetypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from colqwen_pipeline.embedding.embedder import EmbedStats, IdentifiedModel, PageImage, Progress
from colqwen_pipeline.embedding.servers import ModelServerError, ServerPool
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
Encoding = Literal["float", "base64_fp16"]
_clients: dict[str, RemoteEmbedder] = {}
T = TypeVar("T")
__all__ = ["ModelServerError", "RemoteEmbedder", "decode_vectors", "encode_vectors", "remote_embedder"]
_lock = threading.Lock()


def encode_vectors(vectors: np.ndarray, encoding: Encoding) -> list[list[float]] | str:
    if encoding == "base64_fp16":
        return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f2").tobytes()).decode("ascii")
    return np.asarray(vectors, dtype=np.float32).tolist()


def decode_vectors(payload: list[list[float]] | str, dim: int, dtype: type = np.float32) -> np.ndarray:
    if isinstance(payload, str):
        return np.frombuffer(base64.b64decode(payload), dtype="<f2").reshape(-1, dim).astype(dtype)
    return np.asarray(payload, dtype=dtype).reshape(-1, dim)


def image_upload(page: PageImage, index: int) -> tuple[str, bytes, str]:
    """A page file (the pipeline's rendered PNG) is sent as it is, with no re-encoding; an image as PNG."""
    if isinstance(page, Path):
        return page.name, page.read_bytes(), mimetypes.guess_type(page.name)[0] or "application/octet-stream"
    buffer = io.BytesIO()
    page.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return f"image-{index}.png", buffer.getvalue(), "image/png"


class RemoteEmbedder(IdentifiedModel):
    """Embeds through model servers; ``info`` and ``fingerprint`` are the servers' model's.

    ``url``: one server, or several comma-separated (COLQWEN_MODEL_SERVER_URL)."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 600.0,
        wait_s: float = 300.0,
        batch_size: int = 4,
        key: str = "",
        cooldown_s: float = 30.0,
    ):
        urls = list(dict.fromkeys(u.strip().rstrip("/") for u in url.split(",") if u.strip()))
        self.url = ",".join(urls)
        self.batch_size = batch_size  # kept for the interface; the servers batch their own forwards
        self.stats = EmbedStats()
        self.pool = ServerPool(urls, timeout_s, wait_s, key, cooldown_s)
        assert self.pool.identity is not None  # the pool starts only once a server has said its model
        self.identity = self.pool.identity
        self._threads = ThreadPoolExecutor(len(urls), thread_name_prefix="model-server") if len(urls) > 1 else None

    @property
    def info(self) -> dict[str, Any]:
        return self.identity.as_dict() | {"server": self.url}

    @property
    def limits(self) -> dict[str, int]:
        return self.pool.limits

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size

    def embed_images(self, pages: Sequence[PageImage], progress: Progress | None = None) -> list[np.ndarray]:
        """One float16 array (tokens, dim) per page, in input order, as the in-process embedder gives.
        The pages are split over the servers: requests of about len(pages) / servers pages each."""
        share = math.ceil(len(pages) / max(self.pool.usable(), 1)) if pages else 1
        calls = (
            (lambda chunk=chunk: self._embed("/embed_image", files=[("images", upload) for upload in chunk]))
            for chunk in self._upload_chunks(pages, min(share, self.limits["max_images"]))
        )
        results: list[np.ndarray] = []
        for body in self._in_order(calls):
            results += self._decoded(body, np.float16)
            if progress:
                progress(len(results), len(pages))
        self.stats.pages += len(pages)
        return results

    def _upload_chunks(self, images: Sequence[PageImage], most: int) -> Iterator[list[tuple[str, bytes, str]]]:
        """Requests within every server's limits: at most ``most`` files and max_request_mb bytes."""
        budget = self.limits["max_request_mb"] * 2**20 * 0.9  # room for the multipart headers
        chunk: list[tuple[str, bytes, str]] = []
        size = 0
        for i, image in enumerate(images):
            upload = image_upload(image, i)
            if chunk and (len(chunk) == most or size + len(upload[1]) > budget):
                yield chunk
                chunk, size = [], 0
            chunk.append(upload)
            size += len(upload[1])
        if chunk:
            yield chunk

    def embed_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """One float32 array (tokens, dim) per query."""
        results: list[np.ndarray] = []
        step = self.limits["max_queries"]
        for start in range(0, len(queries), step):
            body = self._embed("/embed_text", json={"queries": list(queries[start : start + step])})
            results += self._decoded(body, np.float32)
        self.stats.queries += len(queries)
        return results

    def close(self) -> None:
        if self._threads:
            self._threads.shutdown(wait=False)
        self.pool.close()

    def _in_order(self, calls: Iterator[Callable[[], T]]) -> Iterator[T]:
        """The calls' results in order, with up to one call per server in flight (one server: in this thread)."""
        if self._threads is None:
            yield from (call() for call in calls)
            return
        pending: deque = deque()
        for call in calls:
            pending.append(self._threads.submit(call))
            if len(pending) >= max(self.pool.usable(), 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _embed(self, path: str, **request: Any) -> dict[str, Any]:
        started = time.perf_counter()
        body = self.pool.call("POST", path, params={"encoding": "base64_fp16"}, **request)
        return body | {"seconds": time.perf_counter() - started}

    def _decoded(self, body: dict[str, Any], dtype: type) -> list[np.ndarray]:
        """The answer's vectors; its counters added to ``stats`` (in the caller's thread only)."""
        self.stats.forward_calls += body["forward_calls"]
        self.stats.batch_size_used = max(self.stats.batch_size_used, body["batch_size_used"])
        self.stats.seconds += body["seconds"]
        return [decode_vectors(item, self.dim, dtype) for item in body["embeddings"]]


def remote_embedder(settings: Settings) -> RemoteEmbedder:
    """One client per server list per process: the servers' /info is read once, not per document."""
    url = ",".join(settings.model_server_urls)
    with _lock:
        if url not in _clients:
            _clients[url] = RemoteEmbedder(
                url,
                settings.model_server_timeout_s,
                settings.model_server_wait_s,
                settings.batch_size,
                key=settings.model_server_key,
                cooldown_s=settings.model_server_cooldown_s,
            )
            log.info("embedding through the model server(s) at %s (%s)", url, _clients[url].fingerprint)
        embedder = _clients[url]
    embedder.batch_size = settings.batch_size
    return embedder
