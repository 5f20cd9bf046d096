"""Routes for people and for documents: the search page, the page view with its heatmap, page
images, uploads, removal to the trash and restore (JSON under /documents, HTML forms under /upload and
/documents/...), and the sign-in form. The logic lives in pages.py, heatmap.py, uploads.py, trash.py and
html.py. Removal takes two steps everywhere: the page asks on a page naming the file, the API wants
``?confirm=<file name>``."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from colqwen_pipeline.embedding.identity import model_marker
from colqwen_pipeline.inbox import document_key, document_name, inbox_files, readable
from colqwen_pipeline.service import heatmap, html
from colqwen_pipeline.service.auth import COOKIE, Guards, sign_in_form
from colqwen_pipeline.service.csrf import EXPIRED_FORM, FORM_FIELD
from colqwen_pipeline.service.limits import Refused, check_query, check_query_tokens
from colqwen_pipeline.service.model import ModelHolder, NotReady
from colqwen_pipeline.service.pages import DocumentIds, PageStore, check_width, thumbnail_jpeg
from colqwen_pipeline.service.searching import search_pages
from colqwen_pipeline.service.trash import Trash, Trashed
from colqwen_pipeline.service.uploads import (
    UploadStore,
    WriteTurns,
    document_statuses,
    make_indexer,
    remove_document,
    restore_document,
)
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
PAGE_RESULTS = 12
IMAGE_CACHE = {"cache-control": "private, max-age=60"}


class Web:
    """What the routes share: settings, the model, the index's ids, the page store, the indexer."""

    def __init__(self, holder: ModelHolder, settings: Settings, guards: Guards):
        from colqwen_pipeline.index import make_index

        self.holder, self.settings, self.guards = holder, settings, guards
        self.keys, self.forms = guards.keys, guards.forms
        self.indexed = DocumentIds(lambda: make_index(holder.settings).document_ids())
        self.pages = PageStore(settings, self.indexed)
        self.uploads = UploadStore(settings)
        self.trash = Trash(settings)
        self.turns = WriteTurns()  # server-side ingest, removal and restore take turns
        self.write_lock = self.turns.lock
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

    def document(self, doc_id: str) -> dict[str, Any]:
        found = next((d for d in self.documents() if d["doc_id"] == doc_id), None)
        if found is None:
            raise Refused(404, f"no document {doc_id!r} in the inbox")
        return found

    def accept_upload(self, upload: UploadFile) -> dict[str, Any]:
        name = self.uploads.save(upload.file, upload.filename)
        doc_id = document_key(name)
        by = self.indexer.submit(doc_id, self.settings.inbox / name)
        log.info("upload %s saved as %s (indexed by the %s)", upload.filename, name, by)
        return {"doc_id": doc_id, "document": name, "status": "pending", "indexed_by": by}

    def remove(self, doc_id: str) -> dict[str, Any]:
        trashed = remove_document(self.settings, doc_id, self.turns, self.trash)
        self.indexer.failed.pop(doc_id, None)
        self.indexed.forget()
        return {"doc_id": doc_id, "removed": readable(trashed.document) if trashed else doc_id} | trash_fields(
            self, trashed
        )

    def restore(self, doc_id: str) -> dict[str, Any]:
        restored = restore_document(doc_id, self.turns, self.trash)
        by = self.indexer.submit(doc_id, self.settings.inbox / restored.document)
        return {"doc_id": doc_id, "restored": readable(restored.document), "status": "pending", "indexed_by": by}

    def heatmap_png(
        self, doc_id: str, page: int, query: str, token: int | None, width: int | None, word: int | None = None
    ) -> bytes:
        """``word``: that word's map (its subword tokens merged); ``token``: one query token's; neither: the
        max over every query token, the augmentation tokens included (what MaxSim takes from a patch)."""
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
        if word is not None:
            words = self.query_words(query)
            if not 0 <= word < len(words):
                raise Refused(422, f"word must be between 0 and {len(words) - 1} for this query, not {word}")
            heat = heatmap.word_map(maps, words[word])
        else:
            heat = heatmap.combined_map(maps, token)
        from PIL import Image

        with Image.open(resolved.path) as image:
            return heatmap.overlay(image, heatmap.normalised(heat), width or record.width)

    def query_words(self, query: str) -> list[heatmap.QueryWord]:
        return heatmap.query_words(self.holder.require().processor, query)

    def page_score(self, doc_id: str, page: int, query: str) -> float:
        """The page's MaxSim score for ``query``, from its stored vectors (what the search ranked it by)."""
        artifact, index = self.pages.stored_vectors(self.pages.resolve(doc_id, page))
        return heatmap.maxsim(artifact.page_vectors(index), self.holder.embed_queries([query]).vectors[0])


def trash_fields(web: Web, trashed: Trashed | None) -> dict[str, Any]:
    if trashed is None:
        return {"trash": None}
    purge = time.strftime("%Y-%m-%d", time.gmtime(trashed.purge_at(web.trash.days)))
    return {"trash": {"restore": f"/documents/{quote(trashed.doc_id, safe='')}/restore", "kept_until": purge}}


def add_web_routes(app: FastAPI, holder: ModelHolder, settings: Settings, guards: Guards) -> Web:
    web = Web(holder, settings, guards)
    web.trash.empty_expired()
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
        thumbnail = check_width(width)
        if thumbnail is None:
            return Response(resolved.path.read_bytes(), media_type="image/png", headers=IMAGE_CACHE)
        return Response(thumbnail_jpeg(resolved.path, thumbnail), media_type="image/jpeg", headers=IMAGE_CACHE)

    @app.get("/pages/{doc_id}/{page}/heatmap", tags=["pages"], response_class=Response)
    def page_heatmap(
        doc_id: str,
        page: int,
        q: str = Query(description="the query"),
        token: int | None = Query(None, description="one query token's map (default: the max over all)"),
        width: int | None = Query(None, description="image width (default: the page's)"),
        word: int | None = Query(None, description="one query word's map (its subword tokens merged)"),
    ):
        """PNG of the page, in grey, with its per-patch similarity to the query laid over it in colour."""
        png = web.heatmap_png(doc_id, page, q, token, check_width(width), word)
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
    def delete_document(
        doc_id: str, confirm: str = Query("", description="the document's file name, as GET /documents lists it")
    ) -> dict[str, Any]:
        """Out of the index, the original into the trash (kept COLQWEN_TRASH_DAYS; POST .../restore brings it
        back). A second step: without ``confirm`` naming the file, 409 says which file would go."""
        path = inbox_files(web.settings.inbox).get(doc_id)  # not the whole status list: a DELETE flood stays cheap
        if path is None and doc_id not in web.indexed():
            raise Refused(404, f"no document {doc_id!r} in the inbox or the index")
        name = document_name(web.settings.inbox, path) if path else doc_id  # only index rows left: its doc_id
        if confirm != name:
            raise Refused(409, f"to remove {name}, repeat with ?confirm={quote(name)} (it moves to the trash)")
        return web.remove(doc_id)

    @app.post("/documents/{doc_id}/restore", tags=["documents"])
    async def restore(request: Request, doc_id: str) -> Response:
        """The removed document back from the trash into the inbox, then indexed again. (The page's
        Restore button posts its form here and is sent back to the page.)"""
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = await request.form()
            web.check_form(request, str(form.get(FORM_FIELD, "")))
            await run_in_threadpool(web.restore, doc_id)
            return RedirectResponse(f"/?{html.urlencode({'restored': doc_id})}#documents", status_code=303)
        return JSONResponse(await run_in_threadpool(web.restore, doc_id))


def _add_html_routes(app: FastAPI, web: Web) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def search_page(
        request: Request,
        q: str = "",
        k: int = PAGE_RESULTS,
        page: int = Query(1, ge=1),
        added: str = "",
        removed: str = "",
        restored: str = "",
    ):
        per_page = k if k in html.PAGE_SIZES else PAGE_RESULTS
        body, status = html.search_form(q, per_page), 200
        if q:
            try:
                body += results_page(web, q, per_page, page)
            except (Refused, NotReady) as error:
                status = error.status if isinstance(error, Refused) else 503
                body += f'<p class="error" role="alert">{html.escape(detail(error))}</p>'
        csrf = web.csrf(request)
        documents = web.documents()
        notice = server_notice(web, documents, added, removed, restored, csrf)
        body += html.documents_section(documents, csrf, notice) + html.trash_section(web.trash, csrf)
        return HTMLResponse(html.layout(q or "Search", body, web.model(), web.keys.enabled, csrf), status)

    @app.get("/view/{doc_id}/{page}", response_class=HTMLResponse, include_in_schema=False)
    def view_page(
        request: Request, doc_id: str, page: int, q: str = "", word: int | None = None, rank: int | None = None
    ) -> HTMLResponse:
        resolved = web.pages.resolve(doc_id, page)
        from colqwen_pipeline.documents.manifest import Manifest

        pages = len(Manifest.read(web.pages.pages_dir / resolved.doc_id).pages)
        ready = bool(q) and web.holder.status == "READY"
        words = [w.text for w in web.query_words(q)] if ready else []
        document = next((d["document"] for d in web.documents() if d["doc_id"] == doc_id), doc_id)
        doc = {"doc_id": doc_id, "page": page, "document": document, "pages": pages}
        match: dict[str, float | None] = {"rank": rank if rank and 0 < rank <= web.settings.server_max_top_k else None}
        match["score"] = web.page_score(doc_id, page, q) if ready else None
        body = html.page_view(doc, q, words, word, match)
        title = f"{document} page {page}"
        return HTMLResponse(html.layout(title, body, web.model(), web.keys.enabled, web.csrf(request)))

    @app.post("/upload", include_in_schema=False)
    def upload_form(request: Request, file: UploadFile = File(), csrf: str = Form("")) -> RedirectResponse:
        web.check_form(request, csrf)
        accepted = web.accept_upload(file)
        return RedirectResponse(f"/?{html.urlencode({'added': accepted['doc_id']})}#documents", status_code=303)

    @app.get("/documents/{doc_id}/remove", response_class=HTMLResponse, include_in_schema=False)
    def confirm_removal(request: Request, doc_id: str) -> HTMLResponse:
        """The second step: a page that names the file and says where it goes."""
        document = web.document(doc_id)["document"]
        body = html.confirm_removal(doc_id, document, web.trash.days, web.csrf(request))
        return HTMLResponse(html.layout(f"Remove {document}?", body, web.model(), web.keys.enabled, web.csrf(request)))

    @app.post("/documents/{doc_id}/delete", include_in_schema=False)
    def delete_form(request: Request, doc_id: str, csrf: str = Form("")) -> RedirectResponse:
        web.check_form(request, csrf)
        web.remove(doc_id)
        return RedirectResponse(f"/?{html.urlencode({'removed': doc_id})}#documents", status_code=303)


def _add_sign_in_routes(app: FastAPI, web: Web) -> None:
    @app.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    def sign_in_page(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002 - the form's name
        return HTMLResponse(html.sign_in_page("", web.csrf(request), local_path(next)))

    @app.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        key, csrf, next_path = sign_in_form(await request.body())  # at most SIGN_IN_LIMIT bytes (BodySizeLimit)
        web.check_form(request, csrf)  # else a page elsewhere could sign this browser in with its own key
        access = web.keys.access_of(key) if web.keys.enabled else None
        if access is None:
            page = html.sign_in_page("That key is not accepted.", web.csrf(request), local_path(next_path))
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse(local_path(next_path), status_code=303)  # back to the page that asked
        token = web.guards.sessions.start(access)
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(web.guards.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/sign-out", include_in_schema=False)
    def sign_out(request: Request, csrf: str = Form("")) -> Response:
        web.check_form(request, csrf)
        if token := request.cookies.get(COOKIE):
            web.guards.sessions.revoke(token)  # a copy of the cookie stops working too
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def local_path(target: str) -> str:
    """A path of this server to go back to after sign-in; anything else (another site) is ``/``."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or any(ord(c) < 32 for c in target):
        return "/"
    return target


def server_notice(web: Web, documents: list[dict[str, Any]], added: str, removed: str, restored: str, csrf: str) -> str:
    """The notice after an upload, a removal or a restore, written from the server's own state: a link
    can name a document, not put words on the page."""
    names = {d["doc_id"]: d for d in documents}
    if added in names:
        return html.added_notice(names[added])
    if restored in names:
        return html.restored_notice(names[restored])
    if removed and (trashed := web.trash.latest(removed)) is not None:
        return html.removed_notice(trashed, web.trash.days, csrf)
    return ""


def results_page(web: Web, query: str, per_page: int, page: int) -> str:
    """One page of the ranking: the search asks for every page up to this one's end (MaxSim ranks are
    exact, so page 2 of 12 is ranks 13-24 of a top-24), up to COLQWEN_SERVER_MAX_TOP_K."""
    limit = web.settings.server_max_top_k
    first = (page - 1) * per_page
    if first >= limit:
        raise Refused(422, f"results stop at {limit} pages (COLQWEN_SERVER_MAX_TOP_K)")
    top = min(first + per_page, limit)
    hits = search_pages(web.holder, web.settings, query, top)
    if not hits and not web.indexed():
        return html.EMPTY_INDEX
    shown = hits[first:]
    pager = html.pager(query, per_page, page, more=len(hits) == top < limit)
    return html.results_list(query, shown, thumbnail_sizes(web, shown), first + 1, pager)


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
    title = html.error_title(request.url.path, status)
    return HTMLResponse(html.message_page(title, message, web.model()), status_code=status)
