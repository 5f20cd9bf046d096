"""The server's web side, for real: one PDF ingested by the CLI's ingest, then `colqwen-pipeline serve`
with API keys in a subprocess (tiny model, Milvus Lite); page images, heatmaps, uploads indexed by the
server itself, removal, keys and the sign-in cookie over HTTP; the search page in Debian's Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import SAMPLES, free_port, one_document_env
from colqwen_pipeline_tests.test_server import wait_ready
from colqwen_pipeline_tests.test_ui import browser

KEY = "test-key-0123456789abcdef"  # admin
SEARCH_KEY = "search-key-0123456789abcdef"
LEGACY_KEY = "other-key-abcdefghijklmnop"  # no scope: an admin key, as before scopes
SAMPLE = "pump_maintenance_manual.pdf"
DOC = document_key(SAMPLE)
AUTH = {"authorization": f"Bearer {KEY}"}
SCOPED_KEYS = {"search": SEARCH_KEY, "admin": KEY, "unscoped": LEGACY_KEY}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    """A state directory holding one indexed PDF, as `colqwen-pipeline ingest` leaves it."""
    from colqwen_pipeline.defs.runner import ingest

    root = tmp_path_factory.mktemp("web")
    env = one_document_env(root, tiny_model_dir, SAMPLE) | {"DAGSTER_HOME": str(root / "var" / "dagster")}
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:  # the job's resources read their settings from the environment
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("COLQWEN_REDIS_URL", raising=False)
        patch.delenv("COLQWEN_MILVUS_URI", raising=False)
        assert ingest(Settings(), echo=lambda _: None).pages == 3
    keys = f"search:{SEARCH_KEY},admin:{KEY},{LEGACY_KEY}"
    return env | {"COLQWEN_SERVER_API_KEYS": keys, "COLQWEN_SERVER_MAX_UPLOAD_MB": "1"}


def settings_of(deployment: dict[str, str]) -> Settings:
    home, inbox = Path(deployment["COLQWEN_HOME"]), Path(deployment["COLQWEN_INBOX"])
    return Settings(home=home, inbox=inbox, model=deployment["COLQWEN_MODEL"])


def start_serve(env: dict[str, str], *args: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | env
    command = [sys.executable, "-m", "colqwen_pipeline.cli", "serve", *args]
    return subprocess.Popen(command, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def server(deployment: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = start_serve(deployment, "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as http:
        yield http


def wait_for_status(client: httpx.Client, doc_id: str, wanted: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = {d["doc_id"]: d for d in client.get("/documents").json()["documents"]}
        if entries.get(doc_id, {}).get("status") == wanted:
            return entries[doc_id]
        time.sleep(1)
    raise AssertionError(f"{doc_id} not {wanted} after {timeout_s} s: {entries.get(doc_id)}")


# -- API keys ----------------------------------------------------------------------------------------


# Independent of auth.ROUTE_ACCESS on purpose: a route declared with the wrong scope fails here.
OPEN_ROUTES = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/healthy-check"),
    ("GET", "/sign-in"),
    ("POST", "/sign-in"),
    ("POST", "/sign-out"),
}
ADMIN_ROUTES = {
    ("POST", "/documents"),
    ("POST", "/upload"),
    ("DELETE", "/documents/{doc_id}"),
    ("GET", "/documents/{doc_id}/remove"),
    ("POST", "/documents/{doc_id}/delete"),
    ("POST", "/documents/{doc_id}/restore"),
}  # every other route needs a search key


def registered_routes(deployment: dict[str, str]) -> list[tuple[str, str]]:
    """Every (method, path) the server's app registers, as create_app builds it (not started)."""
    from colqwen_pipeline.service.app import create_app

    app = create_app(settings_of(deployment))
    return sorted({(m, route.path) for route in app.routes for m in route.methods if m != "HEAD"})


def auth_refusal(response: httpx.Response) -> str | None:
    if response.status_code == 401:
        return "no key"
    if response.status_code == 403 and "need an admin key" in response.text:
        return "search only"
    return None


def test_every_registered_route_checks_its_scope(server: str, deployment) -> None:
    """Walks every route with no key, a wrong key, a search key, an admin key and an unscoped key. Nothing
    is harmed: unknown doc_ids, no bodies, no form tokens."""
    routes = registered_routes(deployment)
    assert len(routes) >= 24 and set(routes) >= OPEN_ROUTES | ADMIN_ROUTES
    wrong = {"authorization": "Bearer wrong-key-0123456789abcdef"}
    callers = {"none": {}, "wrong": wrong, "not bearer": {"authorization": KEY}}
    callers |= {scope: {"authorization": f"Bearer {key}"} for scope, key in SCOPED_KEYS.items()}
    for method, template in routes:
        path = template.replace("{doc_id}", "unknown.pdf-00000000").replace("{page}", "1")
        route = (method, template)
        needed = "open" if route in OPEN_ROUTES else "admin" if route in ADMIN_ROUTES else "search"
        for caller, headers in callers.items():
            response = httpx.request(method, server + path, headers=headers, timeout=60)
            refusal = auth_refusal(response)
            if needed == "open" or caller in ("admin", "unscoped") or (caller == "search" and needed == "search"):
                assert refusal is None, (method, path, caller, response.status_code, response.text[:200])
            elif caller == "search":
                assert refusal == "search only", (method, path, response.status_code, response.text[:200])
            else:
                assert refusal == "no key", (method, path, caller, response.status_code)
                assert "Bearer" in response.json()["detail"] and KEY not in response.text


@pytest.mark.parametrize("path", ["/sign-in-admin", "/sign-in/x", "/health/", "/health/live/x", "/healthy-check-x"])
def test_open_paths_are_matched_exactly(server: str, path: str) -> None:
    for method in ("GET", "POST"):
        assert httpx.request(method, server + path).status_code == 401, (method, path)


def test_websocket_handshakes_need_a_key(server: str) -> None:
    """Non-HTTP scopes go through the same check: without a key the handshake is refused 401 by the
    middleware; with one it reaches the router, which has no WebSocket route (403)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws = server.replace("http://", "ws://")
    for path in ("/", "/health/live", "/documents"):
        for headers, status in (({}, 401), ({"authorization": f"Bearer {SEARCH_KEY}"}, 403)):
            with pytest.raises(InvalidStatus) as refused:
                connect(ws + path, additional_headers=headers, open_timeout=30).close()
            assert refused.value.response.status_code == status, (path, headers)


def test_scoped_keys_parse_and_refuse_unknown_scopes(caplog) -> None:
    from colqwen_pipeline.service.auth import Access, ApiKeys, AuthSetupError

    keys = ApiKeys.from_settings(Settings(server_api_keys=f"search:{SEARCH_KEY}, admin:{KEY},{LEGACY_KEY}"))
    assert keys.access_of(SEARCH_KEY) is Access.SEARCH and keys.access_of(KEY) is Access.ADMIN
    assert keys.access_of(LEGACY_KEY) is Access.ADMIN and keys.access_of(f"search:{SEARCH_KEY}") is None
    assert "1 API key(s) without a scope" in caplog.text and "deprecated" in caplog.text
    with pytest.raises(AuthSetupError, match="unknown scope 'owner'") as error:
        ApiKeys.from_settings(Settings(server_api_keys="owner:0123456789abcdef0123"))
    assert "0123456789abcdef0123" not in str(error.value)
    with pytest.raises(AuthSetupError, match="too short"):
        ApiKeys.from_settings(Settings(server_api_keys="search:short"))


def test_health_checks_stay_open_and_say_nothing_of_the_server(server: str, client: httpx.Client) -> None:
    assert httpx.get(f"{server}/health/ready").json() == {"status": "READY"}
    assert client.post("/search", json={"query": "pump"}).json()["results"]


def page_csrf(http: httpx.Client, path: str = "/sign-in") -> str:
    return re.search(r'name="csrf" value="(\w+)"', http.get(path, headers={"accept": "text/html"}).text).group(1)


def sign_in(http: httpx.Client, key: str, next_path: str | None = None) -> httpx.Response:
    form = {"key": key, "csrf": page_csrf(http)} | ({"next": next_path} if next_path else {})
    return http.post("/sign-in", data=form)


def test_sign_in_sets_an_http_only_cookie_that_opens_the_page(server: str) -> None:
    with httpx.Client(base_url=server) as browser_like:
        page = browser_like.get("/", headers={"accept": "text/html"})
        assert page.status_code == 401 and 'name="key"' in page.text  # the sign-in form, not a JSON error
        csrf = re.search(r'name="csrf" value="(\w+)"', page.text).group(1)
        assert browser_like.post("/sign-in", data={"key": KEY}).status_code == 403  # no form token
        assert browser_like.post("/sign-in", data={"key": "not-the-key-0123456789", "csrf": csrf}).status_code == 401
        signed = browser_like.post("/sign-in", data={"key": KEY, "csrf": csrf})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and KEY not in cookie
        assert "Max-Age=43200" in cookie  # COLQWEN_SERVER_SESSION_HOURS=12
        assert browser_like.get("/", headers={"accept": "text/html"}).status_code == 200
        assert browser_like.get(f"/pages/{DOC}/1?width=100").status_code == 200


def test_a_session_is_random_and_signing_out_ends_it_for_every_copy(server: str) -> None:
    with httpx.Client(base_url=server) as first, httpx.Client(base_url=server) as second:
        sign_in(first, KEY)
        sign_in(second, KEY)
        tokens = [client.cookies["colqwen_session"] for client in (first, second)]
        assert tokens[0] != tokens[1] and KEY not in tokens[0]
        copied = {"cookie": f"colqwen_session={tokens[0]}"}
        assert httpx.get(f"{server}/documents", headers=copied).status_code == 200
        assert first.post("/sign-out", data={"csrf": page_csrf(first, "/")}).status_code == 303
        assert httpx.get(f"{server}/documents", headers=copied).status_code == 401  # revoked, not just unset
        assert second.get("/documents").status_code == 200


def test_sessions_expire() -> None:
    from colqwen_pipeline.service.auth import Access, Sessions

    lasting, expired = Sessions(3600), Sessions(1e-9)
    assert lasting.access_of(lasting.start(Access.SEARCH)) is Access.SEARCH
    assert expired.access_of(expired.start(Access.ADMIN)) is None


def test_search_keys_read_but_cannot_change_documents(server: str, deployment) -> None:
    settings = settings_of(deployment)
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {SEARCH_KEY}"}, timeout=60) as reader:
        assert reader.post("/search", json={"query": "pump"}).status_code == 200
        assert reader.get(f"/pages/{DOC}/1?width=100").status_code == 200
        upload = reader.post("/documents", files={"file": ("mine.png", scan("mine"), "image/png")})
        assert upload.status_code == 403 and "admin key" in upload.json()["detail"]
        assert remove(reader, DOC, SAMPLE).status_code == 403
        assert reader.post(f"/documents/{DOC}/restore").status_code == 403
    assert (settings.inbox / SAMPLE).exists() and not (settings.inbox / "mine.png").exists()


def test_a_deep_link_survives_the_sign_in(server: str) -> None:
    with httpx.Client(base_url=server) as browser_like:
        asked = browser_like.get("/?q=pump+pressure", headers={"accept": "text/html"})
        assert asked.status_code == 401 and 'name="next" value="/?q=pump+pressure"' in asked.text
        assert sign_in(browser_like, KEY, "/?q=pump+pressure").headers["location"] == "/?q=pump+pressure"
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        with httpx.Client(base_url=server) as browser_like:
            assert sign_in(browser_like, KEY, elsewhere).headers["location"] == "/", elsewhere


def test_the_sign_in_reads_at_most_a_small_form(server: str) -> None:
    big = httpx.post(f"{server}/sign-in", content=b"key=" + b"x" * 2**20)
    assert big.status_code == 413 and "4096 bytes" in big.json()["detail"]

    def chunks():
        for _ in range(64):
            yield b"k" * 4096

    streamed = httpx.post(f"{server}/sign-in", content=chunks())  # chunked: no Content-Length to refuse by
    assert streamed.status_code == 413


def test_the_page_shows_only_notices_the_server_wrote(client: httpx.Client) -> None:
    html_page = {"accept": "text/html"}
    for params in ({"notice": "Your key expired: call 0800 123"}, {"removed": "unknown.pdf-00000000"}):
        page = client.get("/", params=params, headers=html_page)
        assert page.status_code == 200 and "0800" not in page.text and 'class="notice"' not in page.text
    shown = client.get("/", params={"added": DOC}, headers=html_page).text
    assert f'data-notice-for="{DOC}">{SAMPLE} added; it is <span class="state">indexed</span>.</p>' in shown


def test_serve_refuses_a_network_address_without_keys(deployment: dict[str, str]) -> None:
    open_env = {k: v for k, v in deployment.items() if k != "COLQWEN_SERVER_API_KEYS"}
    process = start_serve(open_env, "--host", "0.0.0.0", "--port", str(free_port()))
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2
    assert output.strip().splitlines() == [output.strip()] and "--insecure" in output and "API keys" in output


def test_a_short_or_unreadable_key_setting_stops_serve_with_one_line(deployment: dict[str, str], tmp_path) -> None:
    for env, cause in (
        ({"COLQWEN_SERVER_API_KEYS": "zq9x"}, "too short"),
        ({"COLQWEN_SERVER_API_KEYS_FILE": str(tmp_path / "missing")}, "cannot read"),
    ):
        process = start_serve(deployment | env, "--port", str(free_port()))
        output = process.communicate(timeout=60)[0].decode().strip()
        assert process.returncode == 2 and cause in output and len(output.splitlines()) == 1, output
        assert "zq9x" not in output  # the key itself is never printed


def test_keys_file_lines_and_comments(tmp_path: Path) -> None:
    from colqwen_pipeline.service.auth import ApiKeys

    (tmp_path / "keys").write_text("# ops team\nfile-key-0123456789abcdef\n\n")
    keys = ApiKeys.from_settings(Settings(server_api_keys="", server_api_keys_file=str(tmp_path / "keys")))
    assert keys.access_of("file-key-0123456789abcdef") is not None and keys.access_of("# ops team") is None


# -- pages, search, heatmaps -------------------------------------------------------------------------


def test_search_results_carry_page_urls_that_serve_the_page(client: httpx.Client, deployment) -> None:
    from colqwen_pipeline.documents.manifest import Manifest

    results = client.post("/search", json={"query": "pump pressure", "top_k": 3}).json()["results"]
    assert len(results) == 3 and all(r["page_url"] == f"/pages/{r['doc_id']}/{r['page']}" for r in results)
    manifest = Manifest.read(settings_of(deployment).pages_dir / DOC)
    for result in results:
        png = client.get(result["page_url"])
        assert png.headers["content-type"] == "image/png"
        record = manifest.pages[result["page"] - 1]
        assert Image.open(io.BytesIO(png.content)).size == (record.width, record.height)
    thumbnail = client.get(f"{results[0]['page_url']}?width=200")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).width == 200


def cli_search(deployment: dict[str, str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_HOME"))}
    command = [sys.executable, "-m", "colqwen_pipeline.cli", "search", "pump pressure", "--json"]
    started = time.perf_counter()
    run = subprocess.run(command, env=clean | deployment | env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run, time.perf_counter() - started


def test_cli_search_embeds_through_the_serve_running_here_and_says_so(server: str, deployment) -> None:
    """With no COLQWEN_MODEL_SERVER_URL, `search` finds the READY server at COLQWEN_SERVER_PORT and loads
    no model; a server it may not use (keys, and no COLQWEN_MODEL_SERVER_KEY) is named, then skipped."""
    port = server.rsplit(":", 1)[1]
    served, served_s = cli_search(deployment, COLQWEN_SERVER_PORT=port, COLQWEN_MODEL_SERVER_KEY=SEARCH_KEY)
    assert f"query embedded by the model server running at {server} (no model load here)" in served.stderr
    assert "model loaded" not in served.stderr
    local, local_s = cli_search(deployment, COLQWEN_SERVER_PORT=port)  # this server wants a key
    assert f"not using the model server at {server} (" in local.stderr and "model loaded" in local.stderr
    ranked = [[(r["doc_id"], r["page"]) for r in json.loads(run.stdout)["results"]] for run in (served, local)]
    assert ranked[0] == ranked[1]
    print(f"search through the running serve {served_s:.1f} s, loading the model {local_s:.1f} s")


@pytest.mark.parametrize(
    "path",
    [
        f"/pages/{DOC}/0",
        f"/pages/{DOC}/4",
        f"/pages/{DOC}/-1",
        f"/pages/{DOC}/one",
        "/pages/..%2F..%2Fetc%2Fpasswd/1",
        "/pages/%2Fetc%2Fpasswd/1",
        "/pages/../../etc/passwd",
        f"/pages/{DOC}%2F..%2F..%2Fdagster/1",
        "/pages/unknown.pdf-0000abcd/1",
        f"/pages/{DOC}/1?width=0",
        f"/pages/{DOC}/1?width=99999",
        f"/pages/{DOC}/0/heatmap?q=pump",
        f"/pages/{DOC}/1/heatmap?q=",
        f"/pages/{DOC}/1/heatmap?q=pump&token=9999",
    ],
)
def test_bad_page_requests_are_4xx_without_internals(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert "Traceback" not in response.text and "/tmp" not in response.text


def test_heatmap_is_the_page_with_its_matches_painted(client: httpx.Client) -> None:
    plain = Image.open(io.BytesIO(client.get(f"/pages/{DOC}/1?width=400").content)).convert("RGB")
    painted = client.get(f"/pages/{DOC}/1/heatmap", params={"q": "pump pressure", "width": 400})
    assert painted.status_code == 200 and painted.headers["content-type"] == "image/png"
    heat = Image.open(io.BytesIO(painted.content)).convert("RGB")
    assert heat.size == plain.size
    reddening = np.asarray(heat, dtype=float)[..., 0] - np.asarray(heat, dtype=float)[..., 2]
    assert reddening.max() > 100  # the strongest patch is painted red over a white/black page
    one_token = client.get(f"/pages/{DOC}/1/heatmap", params={"q": "pump pressure", "token": 1, "width": 400})
    assert one_token.status_code == 200 and one_token.content != painted.content
    one_word = client.get(f"/pages/{DOC}/1/heatmap", params={"q": "pump pressure", "word": 1, "width": 400})
    assert one_word.status_code == 200 and one_word.content not in (painted.content, one_token.content)
    assert client.get(f"/pages/{DOC}/1/heatmap", params={"q": "pump pressure", "word": 2}).status_code == 422


def test_the_page_view_shows_word_chips_its_rank_and_its_score(client: httpx.Client, deployment) -> None:
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
    from colqwen_pipeline.embedding.registry import get_embedder
    from colqwen_pipeline.index.milvus import token_error_per_token
    from colqwen_pipeline.service import heatmap

    best = client.post("/search", json={"query": "pump pressure", "top_k": 1}).json()["results"][0]
    params = {"q": "pump pressure", "rank": 1}
    view = client.get(f"/view/{best['doc_id']}/{best['page']}", params=params, headers={"accept": "text/html"}).text
    chips = re.findall(r'<li><a href="[^"]*"(?: aria-current="true")?>([^<]*)</a></li>', view)
    assert chips == ["all words", "pump", "pressure"] and "endoftext" not in view
    shown = re.search(r"result 1 · score (-?[\d.]+) \(MaxSim\) for “pump pressure”", view)
    assert shown
    # The view shows exact MaxSim over the page's fp16 vectors (to 3 decimals) ...
    settings = settings_of(deployment)
    query = get_embedder(settings.model_copy(update={"redis_url": ""})).embed_queries(["pump pressure"])[0]
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / best["doc_id"])
    (index,) = [i for i, page in enumerate(artifact.pages) if page["page"] == best["page"]]
    assert abs(float(shown.group(1)) - heatmap.maxsim(artifact.page_vectors(index), query)) < 2e-3
    # ... and search ranked it over the index's 7-bit tokens: the two agree within its precision.
    assert (
        abs(float(shown.group(1)) - best["score"])
        <= len(query) * token_error_per_token(settings.index_token_bits) + 5e-4
    )


def test_patch_grid_matches_every_stored_page(deployment, tiny_model_dir: Path) -> None:
    """The processor's grid for each page's size plus the prompt's tokens is exactly what was stored."""
    from colqwen_pipeline.documents.manifest import Manifest
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
    from colqwen_pipeline.embedding.registry import get_embedder
    from colqwen_pipeline.service import heatmap

    settings = settings_of(deployment)
    embedder = get_embedder(settings.model_copy(update={"redis_url": ""}))
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / DOC)
    prompt = heatmap.prompt_tokens(embedder.processor)
    for record, stored in zip(Manifest.read(settings.pages_dir / DOC).pages, artifact.pages, strict=True):
        size = (record.width, record.height)
        grid = heatmap.patch_grid(embedder.patch_grid(size), size, stored["count"], prompt)
        assert grid.n_x * grid.n_y > 100 and grid.tokens == stored["count"]
        with pytest.raises(heatmap.GridMismatch, match="reindex"):
            heatmap.patch_grid(embedder.patch_grid(size), size, stored["count"] + 1, prompt)


def test_similarity_map_peaks_where_the_query_token_is() -> None:
    from colqwen_pipeline.service.heatmap import PatchGrid, normalised, similarity_maps

    grid = PatchGrid(prefix=2, n_x=4, n_y=3, suffix=1)
    rng = np.random.default_rng(0)
    page = rng.normal(size=(grid.tokens, 8)) * 0.1
    query = np.eye(8)[:2]
    page[grid.prefix + 1 * 4 + 3] = query[0]  # row 1, column 3
    page[0] = query[0] * 5  # a prompt token: must not show on the map
    maps = similarity_maps(page, query, grid)
    assert maps.shape == (2, 3, 4)
    assert np.unravel_index(np.argmax(maps[0]), (3, 4)) == (1, 3)
    assert normalised(maps.max(axis=0)).max() == 1.0


# -- documents over HTTP -----------------------------------------------------------------------------


def scan(label: str) -> bytes:
    from PIL import ImageDraw

    image = Image.new("RGB", (600, 800), "white")
    ImageDraw.Draw(image).text((40, 40), label, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_is_indexed_by_the_server_then_removed(client: httpx.Client, deployment) -> None:
    settings = settings_of(deployment)
    response = client.post("/documents", files={"file": ("../../etc/.receipt 7.png", scan("receipt"), "image/png")})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["document"] == "receipt 7.png" and accepted["indexed_by"] == "server"
    assert (settings.inbox / "receipt 7.png").read_bytes() == scan("receipt")
    assert not [p for p in settings.inbox.iterdir() if p.name.startswith(".")]  # no temporary file left
    doc_id = accepted["doc_id"]
    assert wait_for_status(client, doc_id, "indexed")["pages"] == 1
    hits = client.post("/search", json={"query": "receipt", "doc_ids": [doc_id]}).json()["results"]
    assert [h["doc_id"] for h in hits] == [doc_id]

    again = client.post("/documents", files={"file": ("receipt 7.png", scan("another receipt"), "image/png")})
    assert again.json()["document"] == "receipt 7-2.png"  # numbered: the first upload is untouched
    assert (settings.inbox / "receipt 7.png").read_bytes() == scan("receipt")
    second = again.json()["doc_id"]
    wait_for_status(client, second, "indexed")

    for removed, name in ((doc_id, "receipt 7.png"), (second, "receipt 7-2.png")):
        assert remove(client, removed, name).status_code == 200
    assert not (settings.inbox / "receipt 7.png").exists()
    remaining = {d["doc_id"] for d in client.get("/documents").json()["documents"]}
    assert remaining == {DOC}
    assert client.post("/search", json={"query": "receipt", "doc_ids": [doc_id]}).json()["results"] == []
    assert remove(client, doc_id, "receipt 7.png").status_code == 404


def remove(client: httpx.Client, doc_id: str, name: str) -> httpx.Response:
    """The API's removal, confirmed by the file name (the second step)."""
    return client.delete(f"/documents/{doc_id}", params={"confirm": name})


def test_removal_asks_first_keeps_the_bytes_in_the_trash_and_restore_brings_them_back(
    client: httpx.Client, deployment
) -> None:
    from colqwen_pipeline.bulk.plan import current_target, plan_documents
    from colqwen_pipeline.inbox import inbox_files

    settings = settings_of(deployment)
    original = scan("minutes of the board")
    doc_id = client.post("/documents", files={"file": ("board.png", original, "image/png")}).json()["doc_id"]
    wait_for_status(client, doc_id, "indexed")

    unconfirmed = client.delete(f"/documents/{doc_id}")
    assert unconfirmed.status_code == 409 and "board.png" in unconfirmed.json()["detail"]
    assert client.delete(f"/documents/{doc_id}", params={"confirm": "other.png"}).status_code == 409
    assert (settings.inbox / "board.png").read_bytes() == original  # nothing happened yet

    removed = remove(client, doc_id, "board.png")
    assert removed.status_code == 200, removed.text
    assert removed.json()["trash"]["restore"] == f"/documents/{doc_id}/restore"
    assert not (settings.inbox / "board.png").exists()
    trashed = list((settings.home / "trash").glob("*/file/board.png"))
    assert [p.read_bytes() for p in trashed] == [original]
    assert client.post("/search", json={"query": "board", "doc_ids": [doc_id]}).json()["results"] == []
    plan = plan_documents(settings, inbox_files(settings.inbox), current_target(settings), known=[doc_id])
    assert plan.gone == [doc_id] and doc_id not in plan.work  # the sensor's plan: a deletion, no ingest

    restored = client.post(f"/documents/{doc_id}/restore")
    assert restored.status_code == 200 and restored.json()["restored"] == "board.png"
    assert (settings.inbox / "board.png").read_bytes() == original
    assert not list((settings.home / "trash").glob("*/file/board.png"))
    assert wait_for_status(client, doc_id, "indexed")["pages"] == 1
    hits = client.post("/search", json={"query": "board", "doc_ids": [doc_id]}).json()["results"]
    assert [h["doc_id"] for h in hits] == [doc_id]
    assert client.post(f"/documents/{doc_id}/restore").status_code == 404  # nothing left in the trash
    assert remove(client, doc_id, "board.png").status_code == 200


def test_bad_uploads_are_refused_naming_the_file(client: httpx.Client, deployment) -> None:
    settings = settings_of(deployment)
    before = sorted(p.name for p in settings.inbox.iterdir())
    not_a_document = client.post("/documents", files={"file": ("notes.pdf", b"hello, not a pdf", "application/pdf")})
    assert not_a_document.status_code == 415
    assert not_a_document.json()["detail"].startswith("notes.pdf: plain text, not a document this pipeline reads")
    too_big = client.post("/documents", files={"file": ("big.pdf", b"%PDF-1.7\n" + b"0" * 2**21, "application/pdf")})
    assert too_big.status_code == 413 and "COLQWEN_SERVER_MAX_UPLOAD_MB" in too_big.json()["detail"]
    assert client.post("/documents", files={"other": ("a.pdf", b"%PDF-", "application/pdf")}).status_code == 422
    assert sorted(p.name for p in settings.inbox.iterdir()) == before


def test_an_uploaded_pdf_is_searchable_with_only_serve_running(client: httpx.Client) -> None:
    """Issue target: searchable within two minutes of the upload, indexed by the server alone."""
    pdf = (SAMPLES / "acme_annual_report_2025.pdf").read_bytes()
    started = time.monotonic()
    doc_id = client.post("/documents", files={"file": ("annual.pdf", pdf, "application/pdf")}).json()["doc_id"]
    pages = wait_for_status(client, doc_id, "indexed", timeout_s=120)["pages"]
    searchable_s = time.monotonic() - started
    hits = client.post("/search", json={"query": "annual revenue", "doc_ids": [doc_id], "top_k": 20}).json()
    assert pages >= 1 and len(hits["results"]) == pages
    print(f"uploaded PDF ({pages} pages) searchable after {searchable_s:.1f} s")
    assert remove(client, doc_id, "annual.pdf").status_code == 200


def test_a_document_that_fails_to_render_is_listed_as_failed(client: httpx.Client) -> None:
    response = client.post("/documents", files={"file": ("broken.pdf", b"%PDF-1.7\n garbage", "application/pdf")})
    doc_id = response.json()["doc_id"]
    failed = wait_for_status(client, doc_id, "failed")
    assert "broken.pdf" in failed["reason"] and "\n" not in failed["reason"]
    assert remove(client, doc_id, "broken.pdf").status_code == 200


def test_a_document_that_failed_in_a_dagster_run_is_listed_as_failed_until_it_changes(state, instance) -> None:
    """Uploads left to the daemon's sensor fail in a Dagster run the server never sees: the list
    reads the run's failure, and a replaced file waits for its next run."""
    from colqwen_pipeline.defs.runner import ingest
    from colqwen_pipeline.service.uploads import SensorIndexer, document_statuses
    from colqwen_pipeline_tests.conftest import add_sample

    add_sample(state, "scanned_invoice.jpg")
    (state.inbox / "broken.pdf").write_bytes(b"")
    ingest(state, instance=instance, echo=lambda _: None)  # a Dagster run, as the sensor's
    good, broken = document_key("scanned_invoice.jpg"), document_key("broken.pdf")

    listed = {d["doc_id"]: d for d in document_statuses(state, {good}, SensorIndexer())}
    assert listed[broken]["status"] == "failed" and listed[broken]["reason"] == "broken.pdf: empty file"
    assert listed[good]["status"] == "indexed"

    (state.inbox / "broken.pdf").write_bytes(b"%PDF-1.7 a new version")
    later = time.time() + 5
    os.utime(state.inbox / "broken.pdf", (later, later))
    listed = {d["doc_id"]: d for d in document_statuses(state, {good}, SensorIndexer())}
    assert listed[broken]["status"] == "pending"


def test_safe_names_keep_uploads_plain_files_of_the_inbox() -> None:
    from colqwen_pipeline.service.uploads import safe_name

    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\me\\Q3 report.pdf") == "Q3 report.pdf"
    assert safe_name(".bashrc") == "bashrc"
    assert safe_name("~$lock.docx") == "lock.docx"
    assert safe_name("") == "upload"
    assert safe_name("a\x00b;rm -rf.pdf") == "a_b_rm -rf.pdf"
    assert len(safe_name("x" * 500 + ".pdf")) <= 120


def test_auto_indexing_leaves_uploads_to_a_live_daemons_sensor(tmp_path: Path, monkeypatch) -> None:
    """No daemon: the server indexes uploads; a running ``dagster-daemon``: its sensor does; a
    daemon whose last heartbeat is older than ``DAEMON_FRESH_S``: the server again."""
    import threading

    from colqwen_pipeline.defs import instance as dagster_side
    from colqwen_pipeline.defs.instance import daemon_heartbeat_is_fresh
    from colqwen_pipeline.service.uploads import AutoIndexer
    from colqwen_pipeline_tests.dagster_processes import daemon

    for folder in ("dagster", "inbox"):
        (tmp_path / folder).mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("COLQWEN_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("COLQWEN_INBOX", str(tmp_path / "inbox"))  # empty: the daemon's sensor launches nothing
    settings = Settings()
    assert not daemon_heartbeat_is_fresh(settings)
    with daemon(tmp_path):
        deadline = time.monotonic() + 120
        while not daemon_heartbeat_is_fresh(settings):
            assert time.monotonic() < deadline, (tmp_path / "dagster-daemon.log").read_text()[-3000:]
            time.sleep(0.5)
    monkeypatch.setattr(dagster_side, "DAEMON_FRESH_S", 1.0)  # rather than wait a minute after the daemon stopped
    time.sleep(1.5)
    assert not daemon_heartbeat_is_fresh(settings)

    class RecordingServer:  # stands in for the worker thread only: the decision is what is tested
        failed: dict[str, str] = {}
        submitted: list[str] = []

        def submit(self, doc_id: str, path: Path) -> str:
            self.submitted.append(doc_id)
            return "server"

    server = RecordingServer()
    alive = threading.Event()
    indexer = AutoIndexer(server, alive.is_set)  # type: ignore[arg-type]
    assert indexer.submit("a", tmp_path / "a") == "server" and server.submitted == ["a"]
    alive.set()
    assert indexer.submit("b", tmp_path / "b") == "sensor" and server.submitted == ["a"]


# -- the page in a real browser ----------------------------------------------------------------------


@pytest.mark.slow
def test_search_page_heatmap_and_upload_in_chromium(server: str, deployment, tmp_path: Path) -> None:
    shots = tmp_path  # COLQWEN_UPDATE_SCREENSHOTS=1 copies them into docs/ (the README links them)
    with browser() as page:
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(f"{server}/")
        page.fill("#key", KEY)
        with page.expect_navigation():
            page.keyboard.press("Enter")  # the sign-in form, by keyboard
        page.wait_for_selector("#q")
        assert "random-weight test model" in page.inner_text("body")

        page.fill("#q", "pump pressure")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("ol.results img")
        images = page.locator("ol.results img")
        assert images.count() == 3
        page.wait_for_function("[...document.querySelectorAll('ol.results img')].every(i => i.complete)")
        widths = page.eval_on_selector_all("ol.results img", "imgs => imgs.map(i => i.naturalWidth)")
        assert all(width > 100 for width in widths), widths  # every thumbnail loaded
        page.screenshot(path=str(shots / "web-search.png"))

        page.locator("ol.results a").first.focus()
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("#page-image")
        page.wait_for_function("document.getElementById('page-image').naturalWidth > 0")
        assert "/heatmap?" in page.get_attribute("#page-image", "src")
        assert page.locator(".tokens a").all_inner_texts() == ["all words", "pump", "pressure"]
        assert "result 1 · score" in page.inner_text(".match")
        page.screenshot(path=str(shots / "web-heatmap.png"))

        page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

        upload = tmp_path / "valve inspection.png"
        upload.write_bytes(scan("valve inspection"))
        page.goto(f"{server}/")
        page.set_input_files("#file", str(upload))
        page.click("text=Upload")
        page.wait_for_url("**/?added=*")
        assert "valve inspection.png added" in page.inner_text("body")
        doc_id = document_key("valve inspection.png")
        page.wait_for_selector(f'[id="status-{doc_id}"][data-status="indexed"]', timeout=120_000)  # the inline poll
        assert "valve inspection.png added; it is indexed." in page.inner_text("body")  # the notice follows the row
        page.goto(f"{server}/?q=valve+inspection")
        assert "valve inspection.png" in page.inner_text("ol.results")

        page.goto(f"{server}/pages/..%2F..%2Fetc%2Fpasswd/1")
        assert "root:" not in page.content()
    with httpx.Client(base_url=server, headers=AUTH) as http:
        assert remove(http, doc_id, "valve inspection.png").status_code == 200
    if os.environ.get("COLQWEN_UPDATE_SCREENSHOTS"):
        docs = Path(__file__).resolve().parent.parent / "docs"
        for name in ("web-search.png", "web-heatmap.png"):
            shrink_screenshot(shots / name, docs / name)


@pytest.mark.slow
def test_the_page_fits_a_desktop_and_a_phone_in_chromium(server: str, tmp_path: Path) -> None:
    """At 1,400 px no action link wraps; at 390 px the search box is in the first third of the screen, a
    document's name is not broken inside a word, and nothing is wider than the screen."""
    with browser() as page:
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(f"{server}/?q=pump+pressure&k=24")
        page.fill("#key", KEY)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("ol.results img")
        assert page.input_value("select[name=k]") == "24"  # the deep link, its page size included
        one_line = "[...document.querySelectorAll('td.actions a')].map(a => a.getClientRects().length)"
        assert set(page.evaluate(one_line)) == {1}
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        assert page.evaluate("document.getElementById('q').getBoundingClientRect().top") < 844 / 3
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        name = page.locator("table.documents td", has_text=SAMPLE).first
        height, line = name.evaluate("td => [td.clientHeight, parseFloat(getComputedStyle(td).lineHeight)]")
        assert height < 2 * line, (height, line)  # one line: the file name is not split


def test_results_come_in_pages_of_the_size_chosen(client: httpx.Client) -> None:
    from colqwen_pipeline.service import html

    first = client.get("/", params={"q": "pump pressure", "k": 24}, headers={"accept": "text/html"}).text
    assert '<option value="24" selected>' in first and "3 best pages" in first
    assert 'aria-label="Result pages"' not in first  # all 3 fit: no links to other pages
    second = client.get("/", params={"q": "pump pressure", "k": 12, "page": 2}, headers={"accept": "text/html"})
    assert "No indexed page matches" in second.text and "← previous 12" in second.text
    assert "next 12" not in second.text
    links = html.pager("q", 12, 2, more=True)
    assert "page=1" in links and "page=3" in links
    ranked = html.results_list(
        "q", [{"doc_id": "d", "page": 1, "document": "d.pdf", "score": 1.0, "page_url": "/"}], {}, 13
    )
    assert "<strong>13. d.pdf</strong>" in ranked and "pages 13–13" in ranked


def shrink_screenshot(source: Path, target: Path) -> None:
    """A small PNG for the repository: 60% size, 64-colour palette."""
    with Image.open(source) as shot:
        small = shot.convert("RGB").resize((shot.width * 3 // 5, shot.height * 3 // 5), Image.Resampling.LANCZOS)
    small.quantize(64).save(target, optimize=True)
