"""Request limits of the model server. Every refusal is a 4xx whose message names the limit and
the setting that raises it; nothing over a limit is decoded or sent to the model."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from colqwen_pipeline.service.allocator import large_buffers_in_own_mappings, return_freed_memory
from colqwen_pipeline.settings import Settings

RETRY_AFTER_S = 2  # what a client told "busy" waits: about one batch on a CPU
# Peak memory per decoded pixel: Pillow's 4-byte RGB page, colpali's and the embedder's RGB copies, the
# processor's uint8 tensor and its model input (measured 18 B at 39 Mpx, test_model_server_memory.py).
PEAK_BYTES_PER_PIXEL = 30
# A vector value on its way out: float: a Python float in a list (32 B) and its JSON text, twice (str and
# bytes); base64_fp16: 2 B of float16 and 2.7 of base64, twice. Plus the fp16 vectors kept per batch.
WIRE_BYTES_PER_VALUE = {"float": 80, "base64_fp16": 12}
TRIM_FROM_PIXELS = 1_000_000  # after a reservation this large, freed arena pages go back to the OS


class Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class PixelBudget:
    """Memory of the /embed_image requests in flight, counted in decoded pixels, shared by the server.

    A request reserves, before it decodes anything, its largest batch of pages and its whole answer (the
    vectors as they go on the wire, in pixels of the same memory), and returns them once its answer is
    rendered: memory is bounded by the budget, not by requests x images. One reservation per request, so
    no request holds part of the budget while it waits for more. A request that cannot get its pixels
    within ``wait_s`` is answered 503 with Retry-After rather than queued without bound.
    """

    def __init__(self, capacity: int, wait_s: float):
        self.capacity, self.wait_s = capacity, wait_s
        self.in_flight = self.peak = self.refused = 0
        self._changed = threading.Condition()
        large_buffers_in_own_mappings()  # else a freed page stays in its thread's malloc arena

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_flight + pixels <= self.capacity, timeout=self.wait_s):
                self.refused += 1
                raise Refused(
                    503,
                    f"busy: {self.in_flight} of {self.capacity} decoded pixels are in flight "
                    f"(COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT); retry after {RETRY_AFTER_S} s",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= pixels
                self._changed.notify_all()
            if pixels >= TRIM_FROM_PIXELS:
                return_freed_memory()

    def batches(self, pixels: Sequence[int], names: Sequence[str], batch_size: int, answer: int) -> list[list[int]]:
        """The request's batches, each small enough to sit in the budget beside the request's answer;
        refused (413) if some image cannot."""
        room = self.capacity - answer
        for name, count in zip(names, pixels, strict=True):
            if count > room:
                raise Refused(
                    413,
                    f"{name}: {count} pixels and the answer's {answer} exceed the server's whole budget of "
                    f"{self.capacity} (COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT)",
                )
        return list(pixel_batches(pixels, batch_size, room))


def answer_pixels(tokens: int, dim: int, encoding: str) -> int:
    """One image's answer, its vectors on their way to the wire, in pixels of the budget."""
    return -(-tokens * dim * WIRE_BYTES_PER_VALUE[encoding] // PEAK_BYTES_PER_PIXEL)


class BodySizeLimit:
    """ASGI middleware: refuse a body over the limit from its Content-Length, or while it streams
    (chunked uploads declare no length), before any of it is parsed."""

    def __init__(self, app, max_bytes: int, post_limits: dict[str, tuple[int, str]] | None = None):
        self.app, self.max_bytes = app, max_bytes
        self.post_limits = post_limits or {}  # path -> (bytes, what sets it): uploads and sign-in have their own

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, int(declared), limit, setting)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                from fastapi import HTTPException  # FastAPI re-raises HTTPException from body parsing

                raise HTTPException(413, self._message(received, limit, setting))
            return message

        await self.app(scope, limited_receive, send)

    def _limit(self, scope) -> tuple[int, str]:
        if scope["method"] == "POST" and scope["path"] in self.post_limits:
            return self.post_limits[scope["path"]]
        return self.max_bytes, "COLQWEN_SERVER_MAX_REQUEST_MB"

    @staticmethod
    def _message(size: int, limit: int, setting: str) -> str:
        allowed = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit} bytes"
        return f"request body of {size} bytes exceeds the limit of {allowed} ({setting})"

    async def _refuse(self, send, size: int, limit: int, setting: str) -> None:
        body = json.dumps({"detail": self._message(size, limit, setting)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _open_checked(source: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """The image with only its header read; refused if it is not an image or over the pixel cap."""
    source.seek(0)  # an upload is opened twice: for its header, then to decode it
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as error:
        raise Refused(413, f"{name}: image too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError) as error:
        raise Refused(400, f"{name}: not a readable image ({type(error).__name__})") from error
    width, height = image.size
    if width * height > max_pixels:
        limit = f"the limit of {max_pixels} (COLQWEN_SERVER_MAX_IMAGE_PIXELS)"
        raise Refused(413, f"{name}: {width}x{height} = {width * height} pixels exceeds {limit}")
    return image


def image_pixels(source: BinaryIO, name: str, max_pixels: int) -> int:
    """Pixels of an upload, from its header alone (nothing decoded)."""
    with _open_checked(source, name, max_pixels) as image:
        return image.size[0] * image.size[1]


def pixel_batches(pixels: Sequence[int], batch_size: int, capacity: int) -> Iterator[list[int]]:
    """Indices in order, at most ``batch_size`` images and ``capacity`` pixels per batch."""
    batch: list[int] = []
    for i, count in enumerate(pixels):
        if batch and (len(batch) == batch_size or sum(pixels[j] for j in batch) + count > capacity):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def decode_image(source: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """RGB page from an upload (read from its spooled file, never whole in memory); the size is checked
    from the header, before decoding pixels."""
    from colqwen_pipeline.documents.images import to_rgb  # the conversion inbox pages get

    image = _open_checked(source, name, max_pixels)
    try:
        image.load()
        if image.mode == "RGB" and "transparency" not in image.info:
            return image  # already the page: no second copy of its pixels
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "truncated/corrupt"
        raise Refused(400, f"{name}: broken image ({error})") from error


def check_image_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise Refused(422, "no images: send one or more multipart files named 'images'")
    if count > settings.server_max_images:
        raise Refused(
            413,
            f"{count} images exceed the limit of {settings.server_max_images} per request "
            "(COLQWEN_SERVER_MAX_IMAGES): split the request",
        )


def check_queries(queries: Sequence[str], settings: Settings) -> None:
    if not queries:
        raise Refused(422, "queries is empty: send one or more query strings")
    if len(queries) > settings.server_max_queries:
        raise Refused(
            413,
            f"{len(queries)} queries exceed the limit of {settings.server_max_queries} per request "
            "(COLQWEN_SERVER_MAX_QUERIES): split the request",
        )
    for i, query in enumerate(queries):
        check_query(query, settings, f"queries[{i}]")


def check_query(query: str, settings: Settings, name: str = "query") -> None:
    if not query.strip():
        raise Refused(422, f"{name} is empty")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(422, f"{name} is not valid Unicode text (a lone surrogate)") from None
    if len(query) > settings.server_max_query_chars:
        raise Refused(
            422,
            f"{name} has {len(query)} characters, over the limit of {settings.server_max_query_chars} "
            "(COLQWEN_SERVER_MAX_QUERY_CHARS)",
        )


def check_query_tokens(queries: Sequence[str], count_tokens: Callable[[str], int], settings: Settings) -> None:
    """The character cap does not bound tokens (2,000 emoji are ~8,000 byte-level tokens): cap those too."""
    for i, query in enumerate(queries):
        tokens = count_tokens(query)
        if tokens > settings.server_max_query_tokens:
            name = "query" if len(queries) == 1 else f"queries[{i}]"
            raise Refused(
                422,
                f"{name} has {tokens} tokens, over the limit of {settings.server_max_query_tokens} "
                "(COLQWEN_SERVER_MAX_QUERY_TOKENS)",
            )


def check_doc_ids(doc_ids: Sequence[str] | None) -> None:
    """Refused before any work, whatever the index holds: control characters and lone surrogates cannot
    be written into Milvus's filter expression (non-ASCII text can)."""
    for i, doc_id in enumerate(doc_ids or []):
        if any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000 for c in doc_id):
            raise Refused(422, f"doc_ids[{i}] = {doc_id!r} holds a control character or a lone surrogate")


def check_top_k(top_k: int, settings: Settings) -> None:
    if not 1 <= top_k <= settings.server_max_top_k:
        raise Refused(422, f"top_k={top_k} is outside 1..{settings.server_max_top_k} (COLQWEN_SERVER_MAX_TOP_K)")
