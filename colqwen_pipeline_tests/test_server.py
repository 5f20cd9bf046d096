"""The model server, for real: `colqwen-pipeline serve` in a subprocess with the tiny model and a
real Redis, called over HTTP with httpx; readiness and load failure on uvicorn in a thread (so a
test can hold the model load on an Event); the Dagster pipeline embedding through the server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from colqwen_pipeline.embedding.remote import ModelServerError, RemoteEmbedder, decode_vectors
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import SAMPLES, free_port, one_document_env

LIMITS = {
    "MAX_IMAGES": "3",
    "MAX_QUERIES": "4",
    "MAX_QUERY_CHARS": "100",
    "MAX_REQUEST_MB": "1",
    "MAX_IMAGE_PIXELS": "4000000",
    "MAX_TOP_K": "20",
    "MAX_QUERY_TOKENS": "120",  # normal test queries are 20-40 tokens of the tiny tokenizer
    "REQUEST_TIMEOUT_S": "3",
}
SAMPLE = "pump_maintenance_manual.pdf"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, redis_url: str) -> dict[str, str]:
    """The server's environment: its own state directory and an inbox holding one document."""
    env = one_document_env(tmp_path_factory.mktemp("deployment"), tiny_model_dir, SAMPLE)
    env["COLQWEN_REDIS_URL"] = redis_url
    return env | {f"COLQWEN_SERVER_{name}": value for name, value in LIMITS.items()}


@pytest.fixture(scope="module")
def server(deployment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`colqwen-pipeline serve` as a user starts it, on a free port; yields its URL once READY."""
    with serving(deployment, tmp_path_factory.mktemp("server-log") / "serve.log") as (url, _):
        yield url


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A `serve` process with COLQWEN_* taken only from ``env``, on a free port: (URL, process) once READY."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | env
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "colqwen_pipeline.cli", "serve", "--port", str(port)],
            env=clean,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    for _ in range(600):
        if process is not None and process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            ready = httpx.get(f"{url}/health/ready")
            if ready.status_code == 200:
                return
            if ready.json()["status"] == "FAILED":
                pytest.fail(f"model server at {url} failed to load its model: {ready.json()['detail']}")
        time.sleep(0.2)
    pytest.fail(f"server at {url} not READY after 120 s")


@contextlib.contextmanager
def server_in_thread(app) -> Iterator[str]:
    """The same uvicorn server in a thread, for tests that control the app object."""
    import uvicorn

    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    while not uvicorn_server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


def page_png(width: int = 320, height: int = 420, label: str = "page") -> bytes:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, width - 20, 80), fill="navy")
    draw.text((30, 120), label, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"p{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


@pytest.fixture(scope="module")
def local_embedder(deployment: dict[str, str]):
    """The same tiny model loaded in the test process: what the server must reproduce."""
    from colqwen_pipeline.embedding.registry import get_embedder

    home = Path(deployment["COLQWEN_HOME"]).parent / "local"
    return get_embedder(Settings(home=home, model=deployment["COLQWEN_MODEL"], redis_url=""))


# -- health, info, schema ------------------------------------------------------------------------
def test_health_endpoints_answer_like_the_original_server(server: str) -> None:
    assert httpx.get(f"{server}/health/live").json() == {"status": "ALIVE"}
    assert httpx.get(f"{server}/health/ready").json() == {"status": "READY"}
    assert httpx.get(f"{server}/healthy-check").json() == {"status": "UP"}


def test_info_names_the_loaded_model_and_the_limits(server: str) -> None:
    info = httpx.get(f"{server}/info").json()

    assert info["model"]["fingerprint"].startswith("tiny-colqwen2.5@")
    assert (info["model"]["dim"], info["model"]["random_weights"]) == (128, True)
    assert info["limits"]["max_images"] == 3 and info["limits"]["max_request_mb"] == 1
    assert info["cache_enabled"] is True


def strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def test_info_discloses_no_server_paths(server: str, deployment: dict[str, str]) -> None:
    info = httpx.get(f"{server}/info").json()

    assert info["model"]["model"] == info["model"]["load_from"] == "tiny-colqwen2.5"  # the folder's name
    assert [s for s in strings_in(info) if s.startswith("/")] == []
    assert RemoteEmbedder(server).identity.fingerprint == info["model"]["fingerprint"]  # clients still work


def test_non_ascii_document_ids_search_without_error(server: str) -> None:
    found = httpx.post(f"{server}/search", json={"query": "pump", "doc_ids": ["résumé-é"]})

    assert found.status_code == 200, found.text
    assert found.json()["results"] == []


def test_openapi_schema_lists_every_endpoint(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]

    expected = {"/health/live", "/health/ready", "/healthy-check", "/info", "/embed_text", "/embed_image", "/search"}
    assert expected <= set(paths)
    assert "multipart/form-data" in paths["/embed_image"]["post"]["requestBody"]["content"]


# -- embedding -----------------------------------------------------------------------------------
def test_embed_text_matches_the_in_process_model(server: str, local_embedder) -> None:
    queries = ["where is the filter cartridge", "pump pressure table"]

    body = httpx.post(f"{server}/embed_text", json={"queries": queries}).json()

    expected = local_embedder.embed_queries(queries)
    assert len(body["embeddings"]) == 2
    for served, local in zip(body["embeddings"], expected, strict=True):
        assert np.asarray(served).shape == local.shape and local.shape[1] == 128
        np.testing.assert_allclose(np.asarray(served), local, atol=1e-3)


def test_embed_image_in_both_encodings_matches_the_in_process_model(server: str, local_embedder) -> None:
    blobs = [page_png(label="first"), page_png(400, 300, label="second")]

    as_floats = httpx.post(f"{server}/embed_image", files=files(*blobs), timeout=60).json()
    compact = httpx.post(f"{server}/embed_image", params={"encoding": "base64_fp16"}, files=files(*blobs)).json()

    expected = local_embedder.embed_images([Image.open(io.BytesIO(b)).convert("RGB") for b in blobs])
    assert compact["encoding"] == "base64_fp16" and compact["dim"] == 128
    for floats, packed, local in zip(as_floats["embeddings"], compact["embeddings"], expected, strict=True):
        np.testing.assert_allclose(np.asarray(floats), local, atol=1e-2)  # fp16 once a cache hit serves it
        np.testing.assert_allclose(decode_vectors(packed, 128), local, atol=1e-2)
        assert len(packed) < len(str(floats)) / 4  # the point of the compact encoding


def test_repeated_request_is_served_from_the_pipelines_cache_keys(server: str, deployment, redis_url: str) -> None:
    from colqwen_pipeline.documents.pages import pixel_sha256
    from colqwen_pipeline.embedding.cache import EmbeddingCache

    blob = page_png(label=f"cache {time.time_ns()}")
    first = httpx.post(f"{server}/embed_image", files=files(blob)).json()
    second = httpx.post(f"{server}/embed_image", files=files(blob)).json()

    assert (first["cache_hits"], first["forward_calls"]) == (0, 1)
    assert (second["cache_hits"], second["forward_calls"]) == (1, 0)
    cache = EmbeddingCache(redis_url, first["model"], 128)
    cached = cache.get_many([cache.image_key(pixel_sha256(Image.open(io.BytesIO(blob)).convert("RGB")))])[0]
    np.testing.assert_allclose(cached, np.asarray(second["embeddings"][0]), atol=1e-6)


# -- bad requests and limits ---------------------------------------------------------------------
def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (2100, 2000), 255).save(buffer, format="PNG")  # 4.2 Mpx in a few KB
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("path", "request_kwargs", "status", "message"),
    [
        ("/embed_text", {"json": {"queries": ["q"] * 5}}, 413, "COLQWEN_SERVER_MAX_QUERIES"),
        ("/embed_text", {"json": {"queries": ["x" * 101]}}, 422, "COLQWEN_SERVER_MAX_QUERY_CHARS"),
        ("/embed_text", {"json": {"queries": []}}, 422, "queries is empty"),
        ("/embed_text", {"json": {"queries": ["ok", "  "]}}, 422, "queries[1] is empty"),
        ("/embed_text", {"json": {"query": "a"}}, 422, "body.queries: Field required"),
        ("/embed_text", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ("/embed_text", {"json": {"queries": ["a"]}, "params": {"encoding": "hex"}}, 422, "base64_fp16"),
        ("/embed_image", {"files": files(*[page_png()] * 4)}, 413, "COLQWEN_SERVER_MAX_IMAGES"),
        ("/embed_image", {"files": files(os.urandom(1_100_000))}, 413, "COLQWEN_SERVER_MAX_REQUEST_MB"),
        ("/embed_image", {"files": files(huge_png())}, 413, "COLQWEN_SERVER_MAX_IMAGE_PIXELS"),
        ("/embed_image", {"files": files(b"%PDF-1.7 not an image")}, 400, "images[0] (p0.png): not a readable image"),
        ("/embed_image", {"files": files(page_png()[:300])}, 400, "broken image"),
        ("/embed_image", {"data": {"other": "x"}}, 422, "body.images: Field required"),
        ("/search", {"json": {"query": "pump", "top_k": 21}}, 422, "COLQWEN_SERVER_MAX_TOP_K"),
        ("/search", {"json": {"query": "pump", "top_k": 0}}, 422, "top_k=0"),
        ("/search", {"json": {"query": ""}}, 422, "query is empty"),
        # 60 emoji pass the 100-character cap but are 250 tokens: the token cap refuses them
        ("/search", {"json": {"query": "\U0001f600" * 60}}, 422, "COLQWEN_SERVER_MAX_QUERY_TOKENS"),
        ("/embed_text", {"json": {"queries": ["\U0001f600" * 60]}}, 422, "COLQWEN_SERVER_MAX_QUERY_TOKENS"),
        ("/search", {"content": json.dumps({"query": "a \udc80 b"}), "headers": JSON}, 422, "lone surrogate"),
        ("/search", {"json": {"query": "pump", "doc_ids": ["bad\x00id"]}}, 422, "control character"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_cause(server: str, path, request_kwargs, status, message) -> None:
    response = httpx.post(f"{server}{path}", **request_kwargs)

    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_chunked_upload_over_the_byte_limit_is_cut_off(server: str) -> None:
    """No Content-Length to check up front: the limit applies while the body streams in."""
    encoded = httpx.Request("POST", f"{server}/embed_image", files=files(os.urandom(1_200_000)))
    body, content_type = encoded.read(), encoded.headers["content-type"]

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = httpx.post(f"{server}/embed_image", content=chunks(), headers={"content-type": content_type})

    assert response.status_code == 413
    assert "COLQWEN_SERVER_MAX_REQUEST_MB" in response.json()["detail"]


# -- readiness -----------------------------------------------------------------------------------
def test_not_ready_until_the_model_is_loaded_and_warm(state: Settings) -> None:
    """The load waits on an Event the test holds, so "before warm-up" is observed, not raced."""
    from colqwen_pipeline.service.app import create_app

    gate = threading.Event()
    app = create_app(state, load_gate=gate)
    with server_in_thread(app) as url:
        try:
            assert httpx.get(f"{url}/health/live").json() == {"status": "ALIVE"}
            ready = httpx.get(f"{url}/health/ready")
            assert (ready.status_code, ready.json()) == (503, {"status": "LOADING"})
            refused = httpx.post(f"{url}/embed_text", json={"queries": ["too early"]})
            assert refused.status_code == 503 and "loading" in refused.json()["detail"]
            assert httpx.get(f"{url}/info").status_code == 503
        finally:
            gate.set()
        wait_ready(url)
        assert app.state.holder.embedder is not None
        assert httpx.post(f"{url}/embed_text", json={"queries": ["now"]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported_not_ready(state: Settings, tmp_path: Path) -> None:
    from colqwen_pipeline.service.app import create_app

    app = create_app(state.model_copy(update={"model": str(tmp_path / "no-such-model")}))
    with server_in_thread(app) as url:
        for _ in range(200):
            ready = httpx.get(f"{url}/health/ready")
            if ready.json()["status"] != "LOADING":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "FAILED"
        assert "Retry-After" not in httpx.post(f"{url}/embed_text", json={"queries": ["q"]}).headers
        assert "no-such-model does not exist" in ready.json()["detail"]
        assert httpx.get(f"{url}/health/live").status_code == 200
        refused = httpx.post(f"{url}/embed_text", json={"queries": ["q"]}).json()["detail"]
        assert "failed to load" in refused
        for text in (ready.text, refused):  # /health/ready is open to anyone: no server paths in it
            assert str(tmp_path) not in text and "/tmp" not in text, text


def test_removals_waiting_for_the_index_leave_threads_for_probes_and_pages(state: Settings) -> None:
    """45 DELETEs while the index is being written (the test holds the server's write lock, as an upload's
    ingest does): a few wait their turn, the rest are answered busy at once, so the thread pool stays free
    for the probes and the document list."""
    from concurrent.futures import ThreadPoolExecutor

    from colqwen_pipeline.service.app import create_app
    from colqwen_pipeline.service.uploads import REMOVE_WAITERS

    app = create_app(state)
    with server_in_thread(app) as url, ThreadPoolExecutor(45) as pool:
        lock = app.state.web.write_lock
        lock.acquire()
        try:
            names = [f"waiting-{i:02d}.pdf" for i in range(45)]  # real inbox files: unknown ones are 404 at once
            for name in names:
                (state.inbox / name).write_bytes(b"%PDF-1.4 never indexed")
            calls = [
                pool.submit(httpx.delete, f"{url}/documents/{document_key(n)}", params={"confirm": n}, timeout=120)
                for n in names
            ]
            deadline = time.monotonic() + 60
            while sum(call.done() for call in calls) < len(calls) - REMOVE_WAITERS:
                assert time.monotonic() < deadline, f"{sum(c.done() for c in calls)} of 45 DELETEs answered"
                time.sleep(0.1)
            answered = [call.result() for call in calls if call.done()]
            assert {r.status_code for r in answered} == {503} and "busy" in answered[0].json()["detail"]
            assert answered[0].headers["retry-after"]
            assert httpx.get(f"{url}/health/live", timeout=5).status_code == 200
            assert httpx.get(f"{url}/documents", timeout=10).status_code == 200  # a pool thread is free
        finally:
            lock.release()
        assert {call.result().status_code for call in calls} <= {200, 503}  # the waiters removed theirs in turn
        assert sum(call.result().status_code == 200 for call in calls) >= 1


# -- the pipeline with the model held by the server ----------------------------------------------
def test_remote_embedder_keeps_to_the_server_limits(server: str) -> None:
    from colqwen_pipeline.embedding.registry import get_embedder

    embedder = get_embedder(Settings(model_server_url=server, model="/nowhere/no-model"))  # never loaded here
    pages = [Image.open(io.BytesIO(page_png(label=f"limit {i} {time.time_ns()}"))) for i in range(5)]
    seen: list[tuple[int, int]] = []

    vectors = embedder.embed_images(pages, progress=lambda done, total: seen.append((done, total)))

    assert isinstance(embedder, RemoteEmbedder)
    assert seen == [(3, 5), (5, 5)]  # 3 images per request at most (COLQWEN_SERVER_MAX_IMAGES=3)
    assert [v.shape[1] for v in vectors] == [128] * 5 and embedder.stats.forward_calls >= 2
    assert [q.shape[1] for q in embedder.embed_queries([f"q{i}" for i in range(6)])] == [128] * 6


def test_remote_embedder_names_an_unreachable_server() -> None:
    with pytest.raises(ModelServerError, match="unreachable .*COLQWEN_MODEL_SERVER_URL"):
        RemoteEmbedder(f"http://127.0.0.1:{free_port()}", wait_s=0)


def test_pipeline_runs_with_the_model_held_by_the_server(server: str, deployment, monkeypatch) -> None:
    """Dagster materialises a document with the resource in remote mode; COLQWEN_MODEL points at
    nothing, so any in-process load would fail. Then /search finds the document's pages."""
    from colqwen_pipeline.defs.assets import ASSETS
    from colqwen_pipeline.defs.resources import ColQwenResource
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact

    for name in ("COLQWEN_HOME", "COLQWEN_INBOX"):
        monkeypatch.setenv(name, deployment[name])
    monkeypatch.setenv("COLQWEN_MODEL", "/nowhere/no-model")
    monkeypatch.delenv("COLQWEN_REDIS_URL", raising=False)
    key = document_key(SAMPLE)
    served_before = httpx.get(f"{server}/info").json()["served"]["images"]

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [key])
        resources = {"colqwen": ColQwenResource(model_server_url=server)}
        result = dg.materialize(ASSETS, partition_key=key, instance=instance, resources=resources)

    assert result.success
    info = httpx.get(f"{server}/info").json()
    assert info["served"]["images"] == served_before + 3
    artifact = EmbeddingArtifact.read(Settings().embeddings_dir / key)
    assert artifact.fingerprint == info["model"]["fingerprint"] and len(artifact.pages) == 3
    found = httpx.post(f"{server}/search", json={"query": "replace the filter cartridge", "top_k": 3}).json()
    assert found["query"] == "replace the filter cartridge"
    assert [r["doc_id"] for r in found["results"]] == [key] * 3
    assert sorted(r["page"] for r in found["results"]) == [1, 2, 3]
    assert set(found["results"][0]) == {"doc_id", "document", "page", "score", "image_path", "page_url"}
    assert found["model"] == {"fingerprint": info["model"]["fingerprint"], "family": "colqwen2.5", "dim": 128} | {
        "random_weights": True
    }
    image_path = found["results"][0]["image_path"]
    assert image_path.startswith(f"pages/{key}/")  # relative to the state directory, not absolute
    assert (Path(deployment["COLQWEN_HOME"]) / image_path).is_file()


# The real `serve`, but its model says it runs on cuda:0. Why a patch: no GPU exists on these
# machines, and what is under test is the *client* on a host without CUDA, which must treat the
# server's device as the server's (it used to call torch.cuda on "cuda:0 via http://...").
CUDA_SERVE = """
import sys
from colqwen_pipeline.embedding import embedder
reported = embedder.IdentifiedModel.info.fget
embedder.LocalEmbedder.info = property(lambda self: reported(self) | {"device": "cuda:0"})
from colqwen_pipeline.cli import main
sys.exit(main(["serve", "--port", sys.argv[1]]))
"""


def test_a_remote_cuda_model_is_the_servers_device_and_never_this_hosts_gpu(deployment, tmp_path, monkeypatch):
    import torch

    from colqwen_pipeline.defs.runner import ingest, run_check_evaluations

    assert not torch.cuda.is_available()  # the point: this host has no CUDA at all
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | deployment
    env["COLQWEN_HOME"] = str(tmp_path / "server-var")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", CUDA_SERVE, str(port)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        assert httpx.get(f"{url}/info").json()["model"]["device"] == "cuda:0"
        remote = RemoteEmbedder(url)
        assert (remote.identity.device, remote.identity.served_by) == ("cuda:0", url)
        assert not remote.identity.local_cuda
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / SAMPLE).write_bytes((SAMPLES / SAMPLE).read_bytes())
        for name, value in {"COLQWEN_HOME": str(tmp_path / "var"), "COLQWEN_INBOX": str(inbox)}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("COLQWEN_MODEL_SERVER_URL", url)
        monkeypatch.setenv("COLQWEN_MODEL", "/nowhere/no-model")
        monkeypatch.delenv("COLQWEN_REDIS_URL", raising=False)

        with dg.instance_for_test() as instance:
            summary = ingest(Settings(), instance=instance, echo=lambda _: None)
            (run,) = instance.get_runs()
            throughput = next(e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "throughput")
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert summary.failed == {} and summary.pages == 3
    speed = {k: v.value for k, v in throughput.metadata.items()}
    assert (speed["device"], speed["device_type"], speed["served_by"]) == ("cuda:0", "cuda", url)


# -- slow clients --------------------------------------------------------------------------------
def seconds_until_closed(url: str, first: bytes, drip: bytes, limit_s: float = 20.0) -> tuple[float, bytes]:
    """Send ``first``, then one byte of ``drip`` every 0.5 s (slowloris); return when the server hangs up."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=limit_s) as client:
        client.sendall(first)
        client.settimeout(0.5)
        for byte in drip:
            try:
                client.sendall(bytes([byte]))
                chunk = client.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            answer += chunk
            if not chunk:
                break
            if time.monotonic() - started > limit_s:
                break
    return time.monotonic() - started, answer


@pytest.mark.parametrize(
    "first",
    [
        b"POST /search HTTP/1.1\r\nHost: x\r\n",  # headers never finish
        b'POST /search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{"q',
    ],
    ids=["slow-headers", "slow-body"],
)
def test_a_slow_client_is_cut_off_at_the_request_timeout(server: str, first: bytes) -> None:
    """COLQWEN_SERVER_REQUEST_TIMEOUT_S=3: a request dripping in for longer is answered 408 and closed."""
    elapsed, answer = seconds_until_closed(server, first, b"a" * 40)  # 40 bytes at 2/s: 20 s if never cut

    assert elapsed < 10, f"connection still open after {elapsed:.1f} s"
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    assert httpx.get(f"{server}/health/live").status_code == 200  # the server itself is fine


# -- decoded pixels in flight ----------------------------------------------------------------------
def solid_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")  # a few KB for millions of pixels
    return buffer.getvalue()


@pytest.fixture
def budget_server(state: Settings) -> Iterator[tuple[str, object]]:
    """A server with an 8-Mpx budget and no wait: two 3.8-Mpx pages at a time, the rest answered 503."""
    from colqwen_pipeline.service.app import create_app

    settings = state.model_copy(update={"server_max_pixels_in_flight": 8_000_000, "server_pixel_wait_s": 0.0})
    app = create_app(settings)
    with server_in_thread(app) as url:
        wait_ready(url)
        yield url, app.state.pixel_budget


BIG = (2000, 1900)  # 3.8 Mpx


def test_a_request_larger_than_the_budget_is_decoded_one_batch_at_a_time(budget_server) -> None:
    url, budget = budget_server
    blobs = [solid_png(*BIG, (i * 40, 90, 200)) for i in range(5)]  # 19 Mpx in all, over the budget

    response = httpx.post(f"{url}/embed_image", files=files(*blobs), timeout=120)

    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 5
    assert budget.peak <= 8_000_000 and budget.in_flight == 0


def test_a_full_budget_answers_503_with_retry_after(budget_server) -> None:
    url, budget = budget_server
    with budget.reserve(budget.capacity):  # another request's pages, being decoded
        busy = httpx.post(f"{url}/embed_image", files=files(solid_png(*BIG, (10, 200, 10))), timeout=60)

    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    assert "COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT" in busy.json()["detail"]
    assert httpx.post(f"{url}/embed_image", files=files(solid_png(*BIG, (10, 200, 10))), timeout=60).status_code == 200


def test_concurrent_large_requests_stay_inside_the_budget(budget_server) -> None:
    """Six clients of 4 x 3.8-Mpx pages at once: the decoded pixels never exceed the budget; the overflow
    is told to come back (503 + Retry-After), never a 500, never a decode of everything at once."""
    url, budget = budget_server
    start = threading.Barrier(6)
    responses: list[httpx.Response] = []

    def client(n: int) -> None:
        blobs = [solid_png(*BIG, (n * 40, i * 60, 128)) for i in range(4)]
        start.wait()
        responses.append(httpx.post(f"{url}/embed_image", files=files(*blobs), timeout=120))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    assert all(r.headers["Retry-After"] for r in responses if r.status_code == 503)
    assert all(len(r.json()["embeddings"]) == 4 for r in responses if r.status_code == 200)
    assert budget.peak <= 8_000_000 and budget.in_flight == 0


def test_the_pipelines_client_waits_out_a_busy_server(budget_server) -> None:
    """RemoteEmbedder honours 503 + Retry-After: a document is delayed by a busy server, not failed."""
    url, budget = budget_server
    held = threading.Event()
    refused_before = budget.refused

    def hold_budget() -> None:
        """Full until the server has refused the client once (then it must wait and retry), 60 s at most."""
        with budget.reserve(budget.capacity):
            held.set()
            deadline = time.monotonic() + 60
            while budget.refused == refused_before and time.monotonic() < deadline:
                time.sleep(0.05)

    holder = threading.Thread(target=hold_budget)
    holder.start()
    held.wait()
    try:
        vectors = RemoteEmbedder(url, wait_s=60).embed_images([Image.open(io.BytesIO(solid_png(*BIG, (9, 9, 9))))])
    finally:
        holder.join()

    assert len(vectors) == 1 and vectors[0].shape[1] == 128
    assert budget.refused > refused_before and budget.in_flight == 0  # refused while the budget was full, then served


def test_an_image_larger_than_the_whole_budget_is_refused(budget_server) -> None:
    url, _ = budget_server
    response = httpx.post(f"{url}/embed_image", files=files(solid_png(3000, 3000, (1, 2, 3))), timeout=60)

    assert response.status_code == 413 and "COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT" in response.json()["detail"]
