"""HTTP routes of the model server (FastAPI on uvicorn). OpenAPI: /openapi.json and /docs.

Endpoints keep the original model server's contract (/embed_text, /embed_image, the three
health checks, JSON float lists) and add /search, /info and a compact base64 fp16 encoding; web.py
adds the search page, page images and heatmaps, and documents over HTTP; auth.py the API keys.
Handlers are plain functions: FastAPI runs them in its thread pool, the model lock in
``ModelHolder`` serialises forwards, and cache look-ups and Milvus reads run beside them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, BinaryIO

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from colqwen_pipeline.embedding.identity import model_marker
from colqwen_pipeline.embedding.remote import Encoding, encode_vectors
from colqwen_pipeline.service.auth import SIGN_IN_LIMIT, ApiKeyAuth, ApiKeys, Guards, Sessions, undeclared_routes
from colqwen_pipeline.service.csrf import FormTokens, SameOriginGuard
from colqwen_pipeline.service.disclosure import public_model_info, public_text
from colqwen_pipeline.service.html import sign_in_page
from colqwen_pipeline.service.limits import (
    BodySizeLimit,
    PixelBudget,
    Refused,
    answer_pixels,
    check_image_count,
    check_queries,
    check_query_tokens,
    decode_image,
    image_pixels,
)
from colqwen_pipeline.service.model import Embedded, ModelHolder, NotReady
from colqwen_pipeline.service.searching import search_pages
from colqwen_pipeline.service.web import add_web_routes, html_error
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
ENCODING_HELP = "float: JSON float lists (default); base64_fp16: little-endian float16, tokens x dim, row-major"


class TextRequest(BaseModel):
    queries: list[str] = Field(description="Queries to embed; one list of 128-d token vectors comes back per query.")


class SearchRequest(BaseModel):
    query: str
    top_k: int = 5
    doc_ids: list[str] | None = Field(None, description="Restrict to these document ids.")


UPLOAD_PATHS = ("/documents", "/upload")
MULTIPART_FRAMING = 2**16  # room around an upload's bytes


def create_app(
    settings: Settings | None = None, load_gate: threading.Event | None = None, keys: ApiKeys | None = None
) -> FastAPI:
    """The app; the model starts loading in the background when the app starts (``load_gate``
    lets a test hold the load to observe the not-ready state). Keys: from the settings by default."""
    settings = settings or Settings()
    keys = keys or ApiKeys.from_settings(settings)
    holder = ModelHolder(settings, load_gate)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        holder.start()
        yield

    app = FastAPI(title="colqwen-pipeline model server", version="1", lifespan=lifespan)
    app.state.holder = holder
    upload = (settings.server_max_upload_mb * 2**20 + MULTIPART_FRAMING, "COLQWEN_SERVER_MAX_UPLOAD_MB")
    post_limits = dict.fromkeys(UPLOAD_PATHS, upload) | {"/sign-in": (SIGN_IN_LIMIT, "a sign-in form")}
    app.add_middleware(BodySizeLimit, max_bytes=settings.server_max_request_mb * 2**20, post_limits=post_limits)
    guards = Guards(keys, Sessions(settings.server_session_hours * 3600), FormTokens())
    app.add_middleware(
        ApiKeyAuth,
        keys=keys,
        sessions=guards.sessions,
        routes=app.router,
        sign_in_page=lambda session, next_path: sign_in_page("", guards.forms.token(session), next_path),
    )
    app.add_middleware(SameOriginGuard)  # outermost: a cross-site post is refused before its key or body is read
    _add_error_handlers(app, settings)
    _add_health_routes(app, holder, settings)
    _add_model_routes(app, holder, settings)
    app.state.web = add_web_routes(app, holder, settings, guards)
    if missing := undeclared_routes(app.routes):  # a programming error: no route goes unchecked
        raise RuntimeError(f"routes without a declared access in auth.ROUTE_ACCESS: {', '.join(missing)}")
    return app


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> Response:
        page = html_error(request, error.status, error.detail, request.app.state.web)
        return page or JSONResponse({"detail": error.detail}, status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        """A bug or a broken dependency: logged here with its traceback, one line to the client."""
        log.exception("%s %s failed", request.method, request.url.path)
        message = f"internal error ({type(error).__name__}); the server log has the details"
        return html_error(request, 500, message, request.app.state.web) or JSONResponse({"detail": message}, 500)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, error: NotReady) -> JSONResponse:
        loading = request.app.state.holder.status == "LOADING"  # a failed load does not heal: no Retry-After
        detail = public_text(str(error), settings.server_expose_paths)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"} if loading else {})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        """One readable line instead of FastAPI's list of error objects."""
        problems = ["{}: {}".format(".".join(str(p) for p in e["loc"]), e["msg"]) for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


def _add_health_routes(app: FastAPI, holder: ModelHolder, settings: Settings) -> None:
    """On the event loop (async), not in the thread pool: probes answer while every worker thread is busy."""

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "ALIVE"}

    @app.get("/health/ready", tags=["health"], responses={503: {"description": "LOADING or FAILED"}})
    async def ready() -> JSONResponse:
        error = public_text(holder.error, settings.server_expose_paths)  # open to anyone: no server paths
        body = {"status": holder.status} | ({"detail": error} if error else {})
        return JSONResponse(body, status_code=200 if holder.status == "READY" else 503)

    @app.get("/healthy-check", tags=["health"])
    async def healthy_check() -> dict[str, str]:
        return {"status": "UP"}


def _add_model_routes(app: FastAPI, holder: ModelHolder, settings: Settings) -> None:
    budget = PixelBudget(settings.server_max_pixels_in_flight, settings.server_pixel_wait_s)
    app.state.pixel_budget = budget

    @app.get("/info", tags=["model"])
    def info() -> dict[str, Any]:
        """The loaded model (fingerprint, dim, device, precision), the limits, and what this server embedded
        since it started (``served``: pages as ``images``, ``queries``, ``cache_hits``, ``since``)."""
        served = holder.info()
        return served | {"model": public_model_info(served["model"], settings.server_expose_paths)}

    @app.post("/embed_text", tags=["model"])
    def embed_text(request: TextRequest, encoding: Encoding = Query("float", description=ENCODING_HELP)) -> dict:
        check_queries(request.queries, settings)
        check_query_tokens(request.queries, holder.query_tokens, settings)
        return _embeddings(holder.embed_queries(request.queries), encoding, holder)

    @app.post("/embed_image", tags=["model"])
    def embed_image(
        images: list[UploadFile] = File(description="Page images (PNG, JPEG, ...), one multipart file each."),
        encoding: Encoding = Query("float", description=ENCODING_HELP),
    ) -> Response:
        check_image_count(len(images), settings)
        uploads = [(_name(upload, i), upload.file) for i, upload in enumerate(images)]  # spooled, not read
        return _embed_uploads(uploads, holder, budget, encoding, settings)

    @app.post("/search", tags=["search"])
    def search(request: SearchRequest) -> dict:
        """Ranked pages, as ``colqwen-pipeline search --json`` prints them, each with its ``page_url``."""
        results = search_pages(holder, settings, request.query, request.top_k, request.doc_ids)
        return {"query": request.query, "model": model_marker(holder.embedder.identity), "results": results}


def _embed_uploads(
    uploads: list[tuple[str, BinaryIO]],
    holder: ModelHolder,
    budget: PixelBudget,
    encoding: Encoding,
    settings: Settings,
) -> Response:
    """Check every header first (nothing decoded), then, inside one reservation of the shared budget (the
    largest batch and the whole answer), decode and embed one batch at a time and render the answer."""
    embedder, cap = holder.require(), settings.server_max_image_pixels
    names = [name for name, _ in uploads]
    pixels = [image_pixels(source, name, cap) for name, source in uploads]
    answer = answer_pixels(holder.max_tokens_per_image(), embedder.dim, encoding) * len(uploads)
    batches = budget.batches(pixels, names, embedder.batch_size, answer)
    parts: list[Embedded] = []
    with budget.reserve(answer + max(sum(pixels[i] for i in batch) for batch in batches)):
        for batch in batches:
            pages = [decode_image(uploads[i][1], names[i], cap) for i in batch]
            parts.append(holder.embed_images(pages))
            del pages  # decoded pixels go before the next batch is decoded
        return JSONResponse(_embeddings(Embedded.combine(parts), encoding, holder))  # rendered here, in budget


def _embeddings(embedded: Embedded, encoding: Encoding, holder: ModelHolder) -> dict[str, Any]:
    return {
        "embeddings": [encode_vectors(vectors, encoding) for vectors in embedded.vectors],
        "encoding": encoding,
        "dim": holder.embedder.dim,
        "model": holder.embedder.fingerprint,
        "forward_calls": embedded.forward_calls,
        "batch_size_used": embedded.batch_size_used,
        "cache_hits": embedded.cache_hits,
    }


def _name(upload: UploadFile, index: int) -> str:
    return f"images[{index}] ({upload.filename})" if upload.filename else f"images[{index}]"


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from colqwen_pipeline.service.transport import uvicorn_config

    log.info("model server on http://%s:%d (OpenAPI at /docs); loading the model in the background", host, port)
    config = uvicorn_config(create_app(settings), host, port, settings.server_request_timeout_s)
    uvicorn.Server(config).run()
