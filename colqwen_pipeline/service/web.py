"""Routes for people and for documents: the search page, the page view with its heatmap, page
images, uploads and removal (JSON under /documents, HTML forms under /upload and /documents/.../delete),
and the sign-in form. The logic lives in pages.py, heatmap.py, uploads.py and html.py."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from colqwen_pipeline.embedding.identity import model_marker
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.service import heatmap, html
from colqwen_pipeline.service.auth import COOKIE, ApiKeys, sign_in_form
from colqwen_pipeline.service.csrf import EXPIRED_FORM, FormTokens
from colqwen_pipeline.service.limits import Refused, check_query, check_query_tokens
from colqwen_pipeline.service.model import ModelHolder, NotReady
from colqwen_pipeline.service.pages import DocumentIds, PageStore, check_width, thumbnail_jpeg
from colqwen_pipeline.service.searching import search_pages
from colqwen_pipeline.service.uploads import UploadStore, document_statuses, make_indexer, remove_document
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
PAGE_RESULTS = 12
IMAGE_CACHE = {"cache-control": "private, max-age=60"}


class Web:
    """What the routes share: settings, the model, the index's ids, the page store, the indexer."""

    def __init__(self, holder: ModelHolder, settings: Settings, keys: ApiKeys, forms: FormTokens):
        from colqwen_pipeline.index import make_index

        self.holder, self.settings, self.keys, self.forms = holder, settings, keys, forms
        self.indexed = DocumentIds(lambda: make_index(holder.settings).document_ids())
        self.pages = PageStore(settings, self.indexed)
        self.uploads = UploadStore(settings)
        self.write_lock = threading.Lock()  # server-side ingest and removal take turns
        self.indexer = make_indexer(holder.settings, self.write_lock, self.indexed.forget)
        self._prompt: tuple[int, int] | None = None

    def model(self) -> dict[str, Any] | None:
        return model_marker(self.holder.embedder.identity) if self.holder.status == "READY" else None

    def prompt_tokens(self, processor: Any) -> tuple[int, int]:
        if self._prompt is None:
            self._prompt = heatmap.prompt_tokens(processor)
        return self._prompt

    def csrf(self, request: Request) -> str:
        """The form token of this browser (bound to its session cookie)."""
        return self.forms.token(request.cookies.get(COOKIE))

    def check_form(self, request: Request, csrf: str) -> None:
        if not self.forms.valid(csrf, request.cookies.get(COOKIE)):
            raise Refused(403, EXPIRED_FORM)

    def documents(self) -> list[dict[str, Any]]:
        return document_statuses(self.settings, self.indexed(), self.indexer)

    def accept_upload(self, upload: UploadFile) -> dict[str, Any]:
        name = self.uploads.save(upload.file, upload.filename)
        doc_id = document_key(name)
        by = self.indexer.submit(doc_id, self.settings.inbox / name)
        log.info("upload %s saved as %s (indexed by the %s)", upload.filename, name, by)
        return {"doc_id": doc_id, "document": name, "status": "pending", "indexed_by": by}

    def remove(self, doc_id: str) -> str:
        removed = remove_document(self.settings, doc_id, self.write_lock)
        self.indexer.failed.pop(doc_id, None)
        self.indexed.forget()
        return removed

    def heatmap_png(self, doc_id: str, page: int, query: str, token: int | None, width: int | None) -> bytes:
        check_query(query, self.settings)
        check_query_tokens([query], self.holder.query_tokens, self.settings)
        resolved = self.pages.resolve(doc_id, page)
        artifact, index = self.pages.stored_vectors(resolved)
        embedder = self.holder.require()
        if artifact.fingerprint != embedder.fingerprint:
            raise Refused(409, f"{doc_id} was embedded by model {artifact.fingerprint}, the server holds another")
        record = resolved.record
        processor = embedder.processor
        try:
            grid = heatmap.patch_grid(
                embedder.patch_grid((record.width, record.height)),
                (record.width, record.height),
                artifact.pages[index]["count"],
                self.prompt_tokens(processor),
            )
        except heatmap.GridMismatch as error:
            raise Refused(409, f"{doc_id} page {page}: {error}") from None
        maps = heatmap.similarity_maps(
            artifact.page_vectors(index), self.holder.embed_queries([query]).vectors[0], grid
        )
        if token is not None and not 0 <= token < len(maps):
            raise Refused(422, f"token must be between 0 and {len(maps) - 1} for this query, not {token}")
        from PIL import Image

        with Image.open(resolved.path) as image:
            return heatmap.overlay(image, heatmap.normalised(heatmap.combined_map(maps, token)), width or record.width)

    def query_token_labels(self, query: str) -> list[str]:
        processor = self.holder.require().processor
        ids = processor.process_queries([query])["input_ids"][0].tolist()
        return [processor.tokenizer.decode([i]).strip() or "␣" for i in ids]


def add_web_routes(app: FastAPI, holder: ModelHolder, settings: Settings, keys: ApiKeys, forms: FormTokens) -> Web:
    web = Web(holder, settings, keys, forms)
    _add_page_routes(app, web)
    _add_document_routes(app, web)
    _add_html_routes(app, web)
    _add_sign_in_routes(app, web)
    return web


def _add_page_routes(app: FastAPI, web: Web) -> None:
    @app.get("/pages/{doc_id}/{page}", tags=["pages"], response_class=Response)
    def page_image(doc_id: str, page: int, width: int | None = Query(None, description="JPEG thumbnail width")):
        """The rendered page: PNG, or a JPEG thumbnail ``width`` pixels wide."""
        resolved = web.pages.resolve(doc_id, page)
        if check_width(width) is None:
            return Response(resolved.path.read_bytes(), media_type="image/png", headers=IMAGE_CACHE)
        return Response(thumbnail_jpeg(resolved.path, width), media_type="image/jpeg", headers=IMAGE_CACHE)

    @app.get("/pages/{doc_id}/{page}/heatmap", tags=["pages"], response_class=Response)
    def page_heatmap(
        doc_id: str,
        page: int,
        q: str = Query(description="the query"),
        token: int | None = Query(None, description="one query token's map (default: the max over all)"),
        width: int | None = Query(None, description="image width (default: the page's)"),
    ):
        """PNG of the page with its per-patch similarity to the query laid over it."""
        png = web.heatmap_png(doc_id, page, q, token, check_width(width))
        return Response(png, media_type="image/png", headers=IMAGE_CACHE)


def _add_document_routes(app: FastAPI, web: Web) -> None:
    @app.get("/documents", tags=["documents"])
    def list_documents() -> dict[str, Any]:
        """Inbox documents: pending, indexed (with pages) or failed (with the one-line reason)."""
        return {"documents": web.documents()}

    @app.post("/documents", tags=["documents"], status_code=202)
    def upload_document(file: UploadFile = File(description="the document (PDF, office file or image)")) -> dict:
        """Into the inbox under a safe name (numbered if taken), then indexed; 202 with its doc_id."""
        return web.accept_upload(file)

    @app.delete("/documents/{doc_id}", tags=["documents"])
    def delete_document(doc_id: str) -> dict[str, str]:
        """Out of the inbox and the index."""
        return {"doc_id": doc_id, "removed": web.remove(doc_id)}


def _add_html_routes(app: FastAPI, web: Web) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request, q: str = "", notice: str = "") -> HTMLResponse:
        body, status = html.search_form(q), 200
        if q:
            try:
                hits = search_pages(web.holder, web.settings, q, PAGE_RESULTS)
                body += html.results_list(q, hits, thumbnail_sizes(web, hits))
            except (Refused, NotReady) as error:
                status = error.status if isinstance(error, Refused) else 503
                body += f'<p class="error" role="alert">{html.escape(detail(error))}</p>'
        csrf = web.csrf(request)
        body += html.documents_section(web.documents(), csrf, notice)
        return HTMLResponse(html.layout(q or "Search", body, web.model(), web.keys.enabled, csrf), status)

    @app.get("/view/{doc_id}/{page}", response_class=HTMLResponse, include_in_schema=False)
    def view_page(request: Request, doc_id: str, page: int, q: str = "", token: int | None = None) -> HTMLResponse:
        resolved = web.pages.resolve(doc_id, page)
        from colqwen_pipeline.documents.manifest import Manifest

        pages = len(Manifest.read(web.pages.pages_dir / resolved.doc_id).pages)
        tokens = web.query_token_labels(q) if q and web.holder.status == "READY" else []
        document = next((d["document"] for d in web.documents() if d["doc_id"] == doc_id), doc_id)
        doc = {"doc_id": doc_id, "page": page, "document": document}
        body = html.page_view(doc, q, tokens, token, pages)
        title = f"{document} page {page}"
        return HTMLResponse(html.layout(title, body, web.model(), web.keys.enabled, web.csrf(request)))

    @app.post("/upload", include_in_schema=False)
    def upload_form(request: Request, file: UploadFile = File(), csrf: str = Form("")) -> RedirectResponse:
        web.check_form(request, csrf)
        accepted = web.accept_upload(file)
        notice = f"{accepted['document']} added; it is being indexed (indexed by the {accepted['indexed_by']})."
        return RedirectResponse(f"/?{html.urlencode({'notice': notice})}#documents", status_code=303)

    @app.post("/documents/{doc_id}/delete", include_in_schema=False)
    def delete_form(request: Request, doc_id: str, csrf: str = Form("")) -> RedirectResponse:
        web.check_form(request, csrf)
        removed = web.remove(doc_id)
        return RedirectResponse(f"/?{html.urlencode({'notice': f'{removed} removed.'})}#documents", status_code=303)


def _add_sign_in_routes(app: FastAPI, web: Web) -> None:
    @app.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    def sign_in_page(request: Request) -> HTMLResponse:
        return HTMLResponse(html.sign_in_page("", web.csrf(request)))

    @app.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        key, csrf = sign_in_form(await request.body())
        web.check_form(request, csrf)  # else a page elsewhere could sign this browser in with its own key
        if not web.keys.enabled or not web.keys.accepts(key):
            return HTMLResponse(html.sign_in_page("That key is not accepted.", web.csrf(request)), status_code=401)
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"
        token = web.keys.session_token(key)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    @app.post("/sign-out", include_in_schema=False)
    def sign_out(request: Request, csrf: str = Form("")) -> Response:
        web.check_form(request, csrf)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def thumbnail_sizes(web: Web, hits: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, int]]:
    """Width and height attributes of each thumbnail, so the grid does not jump while images load."""
    sizes = {}
    for hit in hits:
        try:
            record = web.pages.resolve(hit["doc_id"], hit["page"]).record
        except Refused:
            continue
        width = min(html.THUMB_WIDTH, record.width)
        sizes[(hit["doc_id"], hit["page"])] = (width, max(1, round(record.height * width / record.width)))
    return sizes


def detail(error: Exception) -> str:
    return error.detail if isinstance(error, Refused) else str(error)


def html_error(request: Request, status: int, message: str, web: Web) -> Response | None:
    """The HTML form of an error for a browser's page request (JSON for everything else)."""
    if "text/html" not in request.headers.get("accept", "") or request.url.path.startswith("/pages/"):
        return None
    return HTMLResponse(
        html.message_page("Something went wrong" if status >= 500 else "Not possible", message, web.model()),
        status_code=status,
    )
