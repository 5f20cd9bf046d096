"""Shared fixtures: a temporary state directory, the tiny model (built once), a real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "inbox"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-colqwen2.5")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path):
    """Settings pointing every path into tmp_path, with an empty inbox and the tiny model."""
    from colqwen_pipeline.settings import Settings

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("COLQWEN_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("COLQWEN_INBOX", str(inbox))
    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_model_dir))
    monkeypatch.delenv("COLQWEN_REDIS_URL", raising=False)
    monkeypatch.delenv("COLQWEN_MILVUS_URI", raising=False)
    return Settings()


@pytest.fixture
def instance():
    """A temporary Dagster instance (runs, events, partitions) for one test."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def eval_state(state, monkeypatch: pytest.MonkeyPatch):
    """``state`` with the repository's evaluation queries."""
    monkeypatch.setenv("COLQWEN_EVAL_SET", str(REPO / "data" / "eval" / "queries.jsonl"))
    return state


def run_in_threads(work: Callable[[], None], count: int, timeout_s: float) -> list[str]:
    """Run ``work`` in ``count`` threads at once; returns what they raised, as reprs."""
    errors: list[str] = []

    def guarded() -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - the caller asserts there is none
            errors.append(repr(error))

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    return errors


def one_document_env(root: Path, model_dir: Path, sample: str) -> dict[str, str]:
    """COLQWEN_* settings of a state directory under ``root`` whose inbox holds one sample."""
    (root / "inbox").mkdir()
    (root / "inbox" / sample).write_bytes((SAMPLES / sample).read_bytes())
    return {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(root / "inbox"), "COLQWEN_MODEL": str(model_dir)}


def add_sample(settings, name: str, target: str | None = None) -> Path:
    destination = settings.inbox / (target or name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / name, destination)
    return destination


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus 2.3.5 standalone server for the whole session (~30 s to start)."""
    from colqwen_pipeline_tests.milvus_server import milvus_server

    with milvus_server(tmp_path_factory.mktemp("milvus-server") / "data") as uri:
        yield uri


def unique_collection(prefix: str = "t") -> str:
    """A collection name of its own on the shared server."""
    import uuid

    return f"{prefix}_{uuid.uuid4().hex[:12]}"
