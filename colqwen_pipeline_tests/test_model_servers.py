"""The pipeline's client of `colqwen-pipeline serve`, against real servers with API keys (subprocesses,
tiny model): the key it sends, and, with several URLs, balancing and failover between servers, the
refusal of a mix of models, and each server's own counts in /info."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from colqwen_pipeline.embedding.remote import ModelServerError, RemoteEmbedder
from colqwen_pipeline_tests.conftest import REPO, free_port, one_document_env
from colqwen_pipeline_tests.test_server import wait_ready

KEY = "pipeline-key-0123456789abcdef"


def start_server(env: dict[str, str], log: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | env
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "colqwen_pipeline.cli", "serve", "--port", str(port)],
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log)
    return process, url


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    env = one_document_env(tmp_path_factory.mktemp("servers"), tiny_model_dir, "pump_maintenance_manual.pdf")
    return env | {"COLQWEN_SERVER_API_KEYS": f"someone-else-0123456789,{KEY}"}


@pytest.fixture(scope="module")
def keyed_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_server(server_env, tmp_path_factory.mktemp("log") / "serve.log")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def page(shade: int) -> Image.Image:
    return Image.new("RGB", (280, 360), (shade, shade, shade))


@pytest.mark.slow  # a model server process (keyed_server)
def test_the_client_sends_the_model_server_key(keyed_server: str) -> None:
    embedder = RemoteEmbedder(keyed_server, wait_s=10, key=KEY)

    vectors = embedder.embed_images([page(200)])

    assert embedder.identity.fingerprint and len(vectors) == 1 and vectors[0].shape[1] == embedder.dim
    assert np.isfinite(vectors[0].astype(np.float32)).all()


@pytest.mark.slow  # a model server process (keyed_server)
def test_a_client_without_the_key_says_which_setting_is_missing(keyed_server: str) -> None:
    for key in ("", "wrong-key-0123456789abcdef"):
        with pytest.raises(ModelServerError) as error:
            RemoteEmbedder(keyed_server, wait_s=10, key=key)
        assert "HTTP 401" in str(error.value) and "COLQWEN_MODEL_SERVER_KEY" in str(error.value)
        assert KEY not in str(error.value)


@pytest.mark.slow  # a model server process (keyed_server)
def test_the_settings_key_reaches_the_client(keyed_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from colqwen_pipeline.embedding import remote
    from colqwen_pipeline.settings import Settings

    monkeypatch.setattr(remote, "_clients", {})
    settings = Settings(_env_file=None, model_server_url=keyed_server, model_server_key=KEY, model_server_wait_s=10)

    assert remote.remote_embedder(settings).embed_queries(["pump filter"])[0].shape[0] > 0


# -- several servers: COLQWEN_MODEL_SERVER_URL=a,b ----------------------------------------------------
COOLDOWN_S = 1.0


@contextlib.contextmanager
def running(env: dict[str, str], log: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    process, url = start_server(env, log, port)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def second_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(server_env, tmp_path_factory.mktemp("log") / "second.log") as (_, url):
        yield url


def served(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()["served"]


def pool(*urls: str) -> RemoteEmbedder:
    return RemoteEmbedder(",".join(urls), wait_s=10, key=KEY, cooldown_s=COOLDOWN_S)


def pages(count: int, seed: int) -> list[Image.Image]:
    return [page((seed * 7 + i * 13) % 250) for i in range(count)]


@pytest.mark.slow
def test_two_servers_share_the_pages_and_each_info_counts_its_own(keyed_server: str, second_server: str) -> None:
    before = {url: served(url) for url in (keyed_server, second_server)}
    embedder = pool(keyed_server, second_server)

    vectors = embedder.embed_images(pages(8, seed=1))
    embedder.embed_queries(["pump filter"])
    embedder.embed_queries(["valve"])

    after = {url: served(url) for url in (keyed_server, second_server)}
    assert len(vectors) == 8 and embedder.identity.served_by == f"{keyed_server},{second_server}"
    assert [after[url]["images"] - before[url]["images"] for url in after] == [4, 4]  # half of the pages each
    assert [after[url]["queries"] - before[url]["queries"] for url in after] == [1, 1]  # one query each, in turn
    assert after[keyed_server]["since"] != "" and "T" in after[keyed_server]["since"]


@pytest.mark.slow
def test_a_killed_server_is_left_out_and_comes_back_once_it_is_up_again(
    keyed_server: str, server_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process, doomed = start_server(server_env, tmp_path / "doomed.log")
    embedder = pool(keyed_server, doomed)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = served(keyed_server)["images"]

    with caplog.at_level(logging.WARNING, logger="colqwen_pipeline.embedding.servers"):
        vectors = embedder.embed_images(pages(4, seed=2))  # half of them were meant for the dead one

    assert len(vectors) == 4 and served(keyed_server)["images"] - before == 4
    assert f"model server {doomed} failed /embed_image (ConnectError" in caplog.text
    port = int(doomed.rsplit(":", 1)[1])
    with running(server_env, tmp_path / "doomed.log", port) as (_, again):
        time.sleep(COOLDOWN_S)
        embedder.embed_images(pages(4, seed=3))
        assert served(again)["images"] == 2  # back in the pool: its share of the next call


@pytest.mark.slow
def test_a_server_of_another_model_is_refused_at_start_and_left_out_after(
    keyed_server: str, server_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    embedder = pool(keyed_server, f"http://127.0.0.1:{port}")  # nothing there yet: left out for now
    other_model = server_env | {"COLQWEN_MAX_VISUAL_TOKENS": "256"}  # another fingerprint
    with running(other_model, tmp_path / "other.log", port) as (_, other):
        time.sleep(COOLDOWN_S)
        with caplog.at_level(logging.ERROR, logger="colqwen_pipeline.embedding.servers"):
            vectors = embedder.embed_images(pages(4, seed=4))
        assert len(vectors) == 4 and served(other)["images"] == 0  # its model never reached this pool
        assert f"model servers {keyed_server} and {other} serve different models" in caplog.text

        with pytest.raises(ModelServerError) as error:
            pool(keyed_server, other)
    message = str(error.value)
    assert f"model servers {keyed_server} and {other} serve different models" in message
    assert "\n" not in message and "COLQWEN_MODEL_SERVER_URL" in message


def test_the_error_when_every_server_is_down_names_them_all() -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]

    with pytest.raises(ModelServerError) as error:
        RemoteEmbedder(",".join(urls), wait_s=0)

    message = str(error.value)
    assert all(f"{url}: unreachable (ConnectError)" in message for url in urls), message
    assert "COLQWEN_MODEL_SERVER_URL" in message and "\n" not in message


@pytest.mark.slow
def test_a_request_fails_naming_every_server_when_all_died_after_start(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    with (
        running(server_env, tmp_path / "a.log") as (first, url_a),
        running(server_env, tmp_path / "b.log") as (
            second,
            url_b,
        ),
    ):
        embedder = pool(url_a, url_b)
        for process in (first, second):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

        with pytest.raises(ModelServerError) as error:
            embedder.embed_queries(["pump filter"])

    message = str(error.value)
    assert message.startswith("every model server failed /embed_text: "), message
    assert f"{url_a}: " in message and f"{url_b}: " in message and "\n" not in message


@pytest.mark.slow
def test_the_rehearsal_spreads_two_ingests_over_two_servers_and_survives_a_killed_one() -> None:
    """scripts/rehearse_model_servers.py, smaller: 3 documents of 2 pages per inbox, two inboxes per round."""
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "rehearse_model_servers.py"), "--docs", "3", "--kill-after", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and summary["ok"], summary | {"stderr": run.stderr[-2000:]}
    spread, failover = summary["spread"], summary["failover"]
    assert sum(spread["pages_per_server"]) == spread["pages"] == 12 and min(spread["pages_per_server"]) > 0
    assert failover["ingests_running_at_kill"] and failover["failovers"] >= 1 and failover["survivor_pages"] > 0
    for index in spread["indexes"] + failover["indexes"]:
        assert (index["documents"], index["indexed"], index["missing"], index["not_embedded"]) == (3, 3, [], [])
        assert index["token_mismatches"] == {}  # each document's tokens in Milvus are its artifact's: written once
