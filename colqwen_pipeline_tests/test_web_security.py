"""Cross-site attacks on `colqwen-pipeline serve`, for real: serve subprocesses (keyless on loopback, and
keyed), an attacker's page served from another port of the same host, and Debian's Chromium visiting it.
The attacks are what issue 30 found: a cross-origin form that removes a document or uploads one, a
same-site page (another port) riding the SameSite=Strict cookie, and framing."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import free_port, one_document_env
from colqwen_pipeline_tests.test_server import wait_ready
from colqwen_pipeline_tests.test_ui import browser
from colqwen_pipeline_tests.test_web import scan, start_serve

KEY = "test-key-0123456789abcdef"
SAMPLE = "pump_maintenance_manual.pdf"
DOC = document_key(SAMPLE)


@contextlib.contextmanager
def serving(root: Path, tiny_model_dir: Path, extra: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`serve` over a fresh state directory whose inbox holds one PDF (not indexed: removal and upload
    need no index); yields its URL and the inbox."""
    env = one_document_env(root, tiny_model_dir, SAMPLE) | {"DAGSTER_HOME": str(root / "dagster")}
    Path(env["DAGSTER_HOME"]).mkdir()
    env |= {"COLQWEN_SERVER_INDEX_UPLOADS": "never"} | extra  # uploads only land in the inbox here
    port = free_port()
    process = start_serve(env, "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, Path(env["COLQWEN_INBOX"])
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    with serving(tmp_path_factory.mktemp("keyless"), tiny_model_dir, {}) as served:
        yield served


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    with serving(tmp_path_factory.mktemp("keyed"), tiny_model_dir, {"COLQWEN_SERVER_API_KEYS": KEY}) as served:
        yield served


@contextlib.contextmanager
def attacker_site(html: str) -> Iterator[str]:
    """A page on another port of 127.0.0.1: another origin, but the same site as the server."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()
        thread.join(timeout=10)


def form_token(page_html: str) -> str:
    tokens = set(re.findall(r'name="csrf" value="([0-9a-f]+)"', page_html))
    assert len(tokens) == 1, tokens  # every form of one page carries the same token
    return tokens.pop()


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{token}">'


def inbox_names(inbox: Path) -> list[str]:
    return sorted(p.name for p in inbox.iterdir())


FOREIGN = [
    {"origin": "http://localhost:9"},  # another origin, from a browser that sends no Sec-Fetch-Site
    {"origin": "null"},  # a sandboxed frame or a file:// page
    {"sec-fetch-site": "same-site"},  # another port of this host: same site, another origin
    {"sec-fetch-site": "cross-site", "origin": "http://evil.example"},
]


@pytest.mark.slow  # a served ingest per origin
@pytest.mark.parametrize("foreign", FOREIGN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_cross_origin_removal_and_upload_are_refused_and_the_file_survives(keyless, foreign: dict) -> None:
    url, inbox = keyless
    before = inbox_names(inbox)
    with httpx.Client(base_url=url, timeout=60) as http:
        token = form_token(http.get("/", headers={"accept": "text/html"}).text)  # even a valid token: refused
        attempts = [
            http.post(f"/documents/{DOC}/delete", data={"csrf": token}, headers=foreign),
            http.delete(f"/documents/{DOC}", headers=foreign),
            http.post(
                "/upload", data={"csrf": token}, files={"file": ("x.png", scan("x"), "image/png")}, headers=foreign
            ),
            http.post("/documents", files={"file": ("x.png", scan("x"), "image/png")}, headers=foreign),
            http.post("/sign-in", data={"key": KEY, "csrf": token}, headers=foreign),
        ]
    for response in attempts:
        assert response.status_code == 403, (response.request.url, response.text)
        assert "cross-origin request refused" in response.json()["detail"]
    assert inbox_names(inbox) == before
    assert (inbox / SAMPLE).stat().st_size > 0


def test_state_changing_forms_need_the_pages_token(keyless) -> None:
    url, inbox = keyless
    with httpx.Client(base_url=url, timeout=60) as http:
        own = {"origin": url, "sec-fetch-site": "same-origin"}
        page = http.get("/", headers={"accept": "text/html"}).text
        token = form_token(page)
        assert f'<form action="/upload" method="post" enctype="multipart/form-data">{csrf_field(token)}' in page
        upload = {"file": ("own upload.png", scan("own"), "image/png")}
        for wrong in ({}, {"csrf": "0" * 64}):
            assert http.post("/upload", data=wrong, files=upload, headers=own).status_code == 403
            assert http.post(f"/documents/{DOC}/delete", data=wrong, headers=own).status_code == 403
        assert "own upload.png" not in inbox_names(inbox) and SAMPLE in inbox_names(inbox)

        added = http.post("/upload", data={"csrf": token}, files=upload, headers=own)
        assert added.status_code == 303 and "own upload.png" in inbox_names(inbox)
        removed = http.post(f"/documents/{document_key('own upload.png')}/delete", data={"csrf": token}, headers=own)
        assert removed.status_code == 303 and "own upload.png" not in inbox_names(inbox)
        assert http.post("/documents", files=upload).status_code == 202  # a program (no browser headers)
        confirmed = {"confirm": "own upload.png"}
        assert http.delete(f"/documents/{document_key('own upload.png')}", params=confirmed).status_code == 200


def test_no_page_may_be_framed(keyless) -> None:
    url, _ = keyless
    for path in ("/", "/health/live", "/documents", "/sign-in"):
        response = httpx.get(url + path, headers={"accept": "text/html"})
        assert response.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path


def attack_page(server: str) -> str:
    """Uploads a file with a no-cors fetch (a simple request: no preflight), then removes the PDF by form."""
    return f"""<!doctype html><form id="remove" method="post" action="{server}/documents/{DOC}/delete"></form>
<script>
var body = new FormData();
body.append('file', new Blob(['%PDF-1.7 planted'], {{type: 'application/pdf'}}), 'planted.pdf');
fetch('{server}/upload', {{method: 'POST', mode: 'no-cors', credentials: 'include', body: body}})
  .finally(function () {{ document.getElementById('remove').submit(); }});
</script>"""


@pytest.mark.slow
def test_a_signed_in_browser_visiting_another_port_loses_nothing(keyed) -> None:
    """The SameSite=Strict cookie goes along from 127.0.0.1:OTHER (same site): the origin check stops it.
    The server's own Remove button, in the same browser, still works."""
    server, inbox = keyed
    before = inbox_names(inbox)
    with browser() as page, attacker_site(attack_page(server)) as attacker:
        page.goto(f"{server}/")
        page.fill("#key", KEY)
        with page.expect_navigation():
            page.click('form[action="/sign-in"] button')
        assert page.locator(f'[id="status-{DOC}"]').count() == 1  # signed in: the documents list shows

        uploaded = page.expect_response(lambda r: r.url.endswith("/upload"))
        removed = page.expect_response(lambda r: r.url.endswith(f"/documents/{DOC}/delete"))
        with uploaded as upload, removed as removal:
            page.goto(attacker)
        assert upload.value.status == 403 and removal.value.status == 403
        assert "cross-origin request refused" in page.inner_text("body")
        assert inbox_names(inbox) == before

        page.goto(f"{server}/")
        with page.expect_navigation():
            page.click(f'a[aria-label="Remove {SAMPLE}"]')  # asks first, naming the file
        assert inbox_names(inbox) == before
        with page.expect_navigation():
            page.click(f"text=Move {SAMPLE} to the trash")
        assert page.url.startswith(f"{server}/?removed=")
        assert SAMPLE not in inbox_names(inbox)  # in the trash before the redirect was sent
        assert f"{SAMPLE} moved to the trash" in page.inner_text("body")
