"""The pipeline's client of `colqwen-pipeline serve`, against real servers with API keys (subprocesses,
tiny model): the key it sends, and, with several URLs, balancing and failover between servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colqwen_pipeline.embedding.remote import ModelServerError, RemoteEmbedder
from colqwen_pipeline_tests.conftest import free_port, one_document_env
from colqwen_pipeline_tests.test_server import wait_ready

KEY = "pipeline-key-0123456789abcdef"


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | env
    with log.open("wb") as out:
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


def test_the_client_sends_the_model_server_key(keyed_server: str) -> None:
    embedder = RemoteEmbedder(keyed_server, wait_s=10, key=KEY)

    vectors = embedder.embed_images([page(200)])

    assert embedder.identity.fingerprint and len(vectors) == 1 and vectors[0].shape[1] == embedder.dim
    assert np.isfinite(vectors[0].astype(np.float32)).all()


def test_a_client_without_the_key_says_which_setting_is_missing(keyed_server: str) -> None:
    for key in ("", "wrong-key-0123456789abcdef"):
        with pytest.raises(ModelServerError) as error:
            RemoteEmbedder(keyed_server, wait_s=10, key=key)
        assert "HTTP 401" in str(error.value) and "COLQWEN_MODEL_SERVER_KEY" in str(error.value)
        assert KEY not in str(error.value)


def test_the_settings_key_reaches_the_client(keyed_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from colqwen_pipeline.embedding import remote
    from colqwen_pipeline.settings import Settings

    monkeypatch.setattr(remote, "_clients", {})
    settings = Settings(_env_file=None, model_server_url=keyed_server, model_server_key=KEY, model_server_wait_s=10)

    assert remote.remote_embedder(settings).embed_queries(["pump filter"])[0].shape[0] > 0
