"""Request limits of the model server. Every refusal is a 4xx whose message names the limit and
the setting that raises it; nothing over a limit is decoded or sent to the model."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from colqwen_pipeline.settings import Settings


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class BodySizeLimit:
    """ASGI middleware: refuse a body over the limit from its Content-Length, or while it streams
    (chunked uploads declare no length), before any of it is parsed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                from fastapi import HTTPException  # FastAPI re-raises HTTPException from body parsing

                raise HTTPException(413, self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        mb = self.max_bytes // 2**20
        return f"request body of {size} bytes exceeds the limit of {mb} MB (COLQWEN_SERVER_MAX_REQUEST_MB)"

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"detail": self._message(size)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """RGB page from upload bytes; the size is checked from the header, before decoding pixels."""
    from colqwen_pipeline.documents.images import _to_rgb  # the conversion inbox pages get

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise Refused(413, f"{name}: image too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError) as error:
        raise Refused(400, f"{name}: not a readable image ({type(error).__name__})") from error
    width, height = image.size
    if width * height > max_pixels:
        limit = f"the limit of {max_pixels} (COLQWEN_SERVER_MAX_IMAGE_PIXELS)"
        raise Refused(413, f"{name}: {width}x{height} = {width * height} pixels exceeds {limit}")
    try:
        image.load()
        return _to_rgb(image)
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


def check_top_k(top_k: int, settings: Settings) -> None:
    if not 1 <= top_k <= settings.server_max_top_k:
        raise Refused(422, f"top_k={top_k} is outside 1..{settings.server_max_top_k} (COLQWEN_SERVER_MAX_TOP_K)")
