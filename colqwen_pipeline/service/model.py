"""The model held by the server: loaded once in a background thread (so the server answers
liveness at once and readiness when the model is warm), forwards serialised by a lock (one
model, one accelerator), and the Redis embedding cache in front of it."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from colqwen_pipeline.embedding.queries import encode_queries, through_cache
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)


class NotReady(Exception):
    """The model is still loading, or failed to load."""


@dataclass
class Embedded:
    vectors: list[np.ndarray]
    forward_calls: int
    batch_size_used: int
    cache_hits: int

    @staticmethod
    def combine(parts: Sequence[Embedded]) -> Embedded:
        """One answer from the batches a request was embedded in, in order."""
        return Embedded(
            [vectors for part in parts for vectors in part.vectors],
            sum(part.forward_calls for part in parts),
            max((part.batch_size_used for part in parts), default=0),
            sum(part.cache_hits for part in parts),
        )


class ModelHolder:
    def __init__(self, settings: Settings, load_gate: threading.Event | None = None):
        # The server loads the model itself, whatever the environment says about a model server.
        self.settings = settings.model_copy(update={"model_server_url": ""})
        self.load_gate = load_gate  # tests hold the load here to observe "not ready"
        self.status = "LOADING"
        self.error = ""
        self.embedder: Any = None
        self.cache: Any = None
        # Counts since this process started: with several servers, each says how many pages and queries it
        # embedded (cache hits included), so a deployment can see the load spread.
        self.served = {"images": 0, "queries": 0, "cache_hits": 0, "images_in_progress": 0}
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._count_lock = threading.Lock()  # handlers run in a thread pool: `+=` on a dict item is no atomic step
        self.prompt_tokens = 0  # the image prompt's text tokens, beside the visual ones
        self._forward_lock = threading.Lock()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, name="model-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        if self.load_gate is not None:
            self.load_gate.wait()
        try:
            from colqwen_pipeline.embedding.registry import get_embedder, open_cache
            from colqwen_pipeline.embedding.validate import TokenCounts

            embedder = get_embedder(self.settings)  # loads and warms up
            self.cache = open_cache(self.settings, embedder.identity)
            # serve holds its model in this process (a LocalEmbedder, with its processor)
            self.prompt_tokens = TokenCounts(embedder.processor).prompt  # type: ignore[attr-defined]
        except Exception as error:  # any load failure must show in /health/ready, not kill the thread silently
            log.exception("model load failed")
            self.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            self.status = "FAILED"
            return
        self.embedder = embedder
        self.status = "READY"
        log.info("model server ready: %s on %s", embedder.fingerprint, embedder.info["device"])

    def require(self) -> Any:
        if self.status == "FAILED":
            raise NotReady(f"model failed to load: {self.error}")
        if self.status != "READY":
            raise NotReady("model is loading; retry when GET /health/ready answers READY")
        return self.embedder

    def max_tokens_per_image(self) -> int:
        """The most token vectors one image's answer can hold (what the pixel budget reserves for it)."""
        return self.require().identity.max_visual_tokens + self.prompt_tokens

    def query_tokens(self, query: str) -> int:
        """Tokens of a query as the model would see them (prefix and padding included)."""
        return len(self.require().processor.process_queries([query])["input_ids"][0])

    def info(self) -> dict[str, Any]:
        embedder = self.require()
        settings = self.settings
        return {
            "model": embedder.info | {"batch_size": embedder.batch_size},
            "limits": {
                "max_images": settings.server_max_images,
                "max_queries": settings.server_max_queries,
                "max_query_chars": settings.server_max_query_chars,
                "max_query_tokens": settings.server_max_query_tokens,
                "max_pixels_in_flight": settings.server_max_pixels_in_flight,
                "max_request_mb": settings.server_max_request_mb,
                "max_image_pixels": settings.server_max_image_pixels,
                "max_top_k": settings.server_max_top_k,
            },
            "cache_enabled": bool(self.cache and self.cache.enabled),
            "served": self.counts(),
        }

    def count(self, **served: int) -> None:
        with self._count_lock:
            for name, number in served.items():
                self.served[name] += number

    def counts(self) -> dict[str, int | str]:
        """``images`` (pages) and ``queries`` embedded, ``cache_hits`` among them, ``since`` the start (UTC);
        ``images_in_progress``: pages being embedded now."""
        with self._count_lock:
            return dict(self.served) | {"since": self.started_at}

    def embed_images(self, images: Sequence[Image.Image]) -> Embedded:
        from colqwen_pipeline.documents.pages import pixel_sha256

        embedder = self.require()
        keys = [self.cache.image_key(pixel_sha256(image)) for image in images]  # the pipeline's page keys
        counted = _Forwards(self)
        self.count(images_in_progress=len(images))
        try:
            vectors, hits = through_cache(
                self.cache,
                keys,
                lambda missing: counted.run(lambda: embedder.embed_images([images[i] for i in missing])),
            )
        finally:
            self.count(images_in_progress=-len(images))
        self.count(images=len(images))
        return counted.result(vectors, hits)

    def embed_queries(self, queries: Sequence[str]) -> Embedded:
        embedder = self.require()
        counted = _Forwards(self)
        vectors, hits = encode_queries(
            self.cache, lambda texts: counted.run(lambda: embedder.embed_queries(texts)), queries
        )
        self.count(queries=len(queries))
        return counted.result(vectors, hits)


class _Forwards:
    """The model's forward passes for one request, one request at a time on the accelerator."""

    def __init__(self, model: ModelHolder):
        self.model, self.forwards, self.batch_used = model, 0, 0

    def run(self, embed: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        with self.model._forward_lock:
            stats = self.model.embedder.stats
            before, stats.batch_size_used = stats.forward_calls, 0
            vectors = embed()
            self.forwards, self.batch_used = stats.forward_calls - before, stats.batch_size_used
        return vectors

    def result(self, vectors: list[np.ndarray], hits: int) -> Embedded:
        self.model.count(cache_hits=hits)
        return Embedded(vectors, self.forwards, self.batch_used, hits)
