"""An embedder that calls a model server (`colqwen-pipeline serve`) instead of loading the model.

It has the interface of :class:`~colqwen_pipeline.embedding.embedder.Embedder`, so the document
embedding, the cache and the index work unchanged, and many pipeline processes share one loaded
model. The wire format of the vectors lives here too, because both sides must agree on it:
``float`` (JSON float lists, as the original model server) or ``base64_fp16`` (row-major
little-endian float16, tokens x dim: ~6x smaller than JSON and exactly what the artifact stores).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import mimetypes
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.embedding.embedder import EmbedStats, IdentifiedModel, PageImage, Progress
from colqwen_pipeline.embedding.identity import ModelIdentity
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
Encoding = Literal["float", "base64_fp16"]
_clients: dict[str, RemoteEmbedder] = {}
_lock = threading.Lock()


class ModelServerError(PipelineError):
    """The model server is unreachable, not ready, or refused a request; one clear line."""


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


def identity_from(served: dict[str, Any], url: str) -> ModelIdentity:
    """The server's model identity: ``device`` is the server's device, ``served_by`` where it runs,
    so that this process never reads its own (possibly absent) GPU for it."""
    names = {f.name for f in dataclasses.fields(ModelIdentity)} - {"served_by"}
    missing = names - served.keys()
    if missing:
        raise ModelServerError(f"model server {url}/info lacks {sorted(missing)}: server and client versions differ")
    return ModelIdentity(**{name: served[name] for name in names}, served_by=url)


class RemoteEmbedder(IdentifiedModel):
    """Embeds through a model server; ``info`` and ``fingerprint`` are the server's model's."""

    def __init__(self, url: str, timeout_s: float = 600.0, wait_s: float = 300.0, batch_size: int = 4, key: str = ""):
        import httpx

        self.url = url.rstrip("/")
        self.batch_size = batch_size  # kept for the interface; the server batches its own forwards
        self.stats = EmbedStats()
        self.busy_wait_s = wait_s  # how long a busy server's 503 + Retry-After is waited out
        headers = {"Authorization": f"Bearer {key}"} if key else {}  # a server with API keys refuses others
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)
        self._wait_until_ready(wait_s)
        served = self._call("GET", "/info")
        self.limits: dict[str, int] = served["limits"]
        self.identity = identity_from(served["model"], self.url)

    @property
    def info(self) -> dict[str, Any]:
        return self.identity.as_dict() | {"server": self.url}

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size

    def embed_images(self, pages: Sequence[PageImage], progress: Progress | None = None) -> list[np.ndarray]:
        """One float16 array (tokens, dim) per page, in input order, as the in-process embedder gives."""
        results: list[np.ndarray] = []
        for chunk in self._upload_chunks(pages):
            results += self._embed("/embed_image", np.float16, files=[("images", upload) for upload in chunk])
            if progress:
                progress(len(results), len(pages))
        self.stats.pages += len(pages)
        return results

    def _upload_chunks(self, images: Sequence[PageImage]) -> Iterator[list[tuple[str, bytes, str]]]:
        """Requests within the server's limits: at most max_images files and max_request_mb bytes."""
        budget = self.limits["max_request_mb"] * 2**20 * 0.9  # room for the multipart headers
        chunk: list[tuple[str, bytes, str]] = []
        size = 0
        for i, image in enumerate(images):
            upload = image_upload(image, i)
            if chunk and (len(chunk) == self.limits["max_images"] or size + len(upload[1]) > budget):
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
            results += self._embed("/embed_text", np.float32, json={"queries": list(queries[start : start + step])})
        self.stats.queries += len(queries)
        return results

    def close(self) -> None:
        self._http.close()

    def _embed(self, path: str, dtype: type, **request: Any) -> list[np.ndarray]:
        started = time.perf_counter()
        body = self._call("POST", path, params={"encoding": "base64_fp16"}, **request)
        self.stats.forward_calls += body["forward_calls"]
        self.stats.batch_size_used = max(self.stats.batch_size_used, body["batch_size_used"])
        self.stats.seconds += time.perf_counter() - started
        return [decode_vectors(item, self.dim, dtype) for item in body["embeddings"]]

    def _call(self, method: str, path: str, **request: Any) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + self.busy_wait_s
        while True:
            try:
                response = self._http.request(method, path, **request)
            except httpx.HTTPError as error:
                raise ModelServerError(f"model server {self.url}{path}: {type(error).__name__}: {error}") from error
            retry_after = _retry_after(response)
            if retry_after is None or time.monotonic() + retry_after > deadline:
                break
            time.sleep(retry_after)  # busy (its pixel budget is full) or still loading: it said when to come back
        if response.status_code == 401:
            raise ModelServerError(
                f"model server {self.url}{path}: HTTP 401: set COLQWEN_MODEL_SERVER_KEY to one of the server's "
                "COLQWEN_SERVER_API_KEYS"
            )
        if response.status_code != 200:
            raise ModelServerError(f"model server {self.url}{path}: HTTP {response.status_code}: {_detail(response)}")
        return response.json()

    def _wait_until_ready(self, wait_s: float) -> None:
        """A server that is still loading its model is worth waiting for; an absent one is not."""
        import httpx

        deadline = time.monotonic() + wait_s
        while True:
            try:
                response = self._http.get("/health/ready")
            except httpx.TransportError as error:
                raise ModelServerError(
                    f"model server {self.url} unreachable ({type(error).__name__}): start `colqwen-pipeline serve` "
                    "there or unset COLQWEN_MODEL_SERVER_URL to load the model in-process"
                ) from error
            status = _json(response).get("status")
            if response.status_code == 200:
                return
            if status == "FAILED" or time.monotonic() >= deadline:
                raise ModelServerError(f"model server {self.url} not ready ({status}): {_detail(response)}")
            time.sleep(0.5)


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _detail(response: Any) -> str:
    body = _json(response)
    return str(body.get("detail") or body.get("status") or response.text[:200])


def remote_embedder(settings: Settings) -> RemoteEmbedder:
    """One client per server URL per process: the server's /info is read once, not per document."""
    url = settings.model_server_url
    with _lock:
        if url not in _clients:
            _clients[url] = RemoteEmbedder(
                url,
                settings.model_server_timeout_s,
                settings.model_server_wait_s,
                settings.batch_size,
                key=settings.model_server_key,
            )
            log.info("embedding through the model server at %s (%s)", url, _clients[url].fingerprint)
        embedder = _clients[url]
    embedder.batch_size = settings.batch_size
    return embedder


def _retry_after(response: Any) -> float | None:
    """Seconds a 503 asks the client to wait, or None for any other answer."""
    value = response.headers.get("Retry-After", "")
    return float(value) if response.status_code == 503 and value.isdigit() else None
