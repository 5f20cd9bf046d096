"""Shared fixtures: a temporary state directory, the tiny model (built once), a real Redis; and
the suite's tiers and its split over pytest-xdist workers (``make test`` runs ``-n 4``).

Under xdist each worker is its own process with its own Redis, Milvus server and Dagster
instances on free ports and temporary directories; the tiny model is built once for all workers.
A module runs whole on one worker (its module fixtures start once), and every test that uses
the Milvus server runs on the same worker (one server, ~30 s to start, for the run)."""

from __future__ import annotations

import contextlib
import os
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


# Modules that are slow as a whole (servers, browsers, subprocess ingests, Dagster processes):
# the `slow` tier. A test that uses the Milvus server is slow wherever it is (see
# pytest_collection_modifyitems); single slow tests elsewhere carry @pytest.mark.slow.
SLOW_MODULES = {
    "test_concurrency",
    "test_deploy",
    "test_rehearsal",
    "test_search_under_load",
    "test_server",
    "test_signals",
    "test_ui",
    "test_ui_status",
    "test_web",
}
SLOW_FIXTURES = {"milvus_uri"}
MILVUS_GROUP = "milvus-server"


def _uses_milvus_server(item: pytest.Item) -> bool:
    """A test that asks for the session's Milvus server: by argument, or through a fixture
    parametrized over backends whose server parameter asks for it by getfixturevalue."""
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(value, str) and value.endswith("server") for value in params.values())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the groups into node-id suffixes
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier, and group tests for ``--dist loadgroup``: by module, and every test
    that uses the Milvus server into one group. Heavier groups are listed first so that the workers
    finish together (xdist hands out groups in collection order with --no-loadscope-reorder).
    Without ``tryfirst`` xdist read the markers before they were added: every test was its own group,
    and each worker started its own copy of every module's servers."""
    for item in items:
        module = item.module.__name__ if getattr(item, "module", None) else item.nodeid.split("::")[0]
        short = module.rsplit(".", 1)[-1]
        server = _uses_milvus_server(item)
        if short in SLOW_MODULES or server:
            item.add_marker(pytest.mark.slow)
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(MILVUS_GROUP if server else short))
    weight = {group: _group_weight(group) for group in {_group_of(item) for item in items}}
    items.sort(key=lambda item: -weight[_group_of(item)])  # stable: the order inside a group stays


def _group_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.kwargs.get("name", marker.args[0] if marker.args else "")) if marker else ""


# Seconds per group, the sum of its tests' durations in one `make test` (3 workers on 2 cores,
# 2026-12-04, `--durations=0`); groups not listed weigh 10. Only the order of groups follows from
# these numbers, never a test's outcome: the heaviest start first, so the workers finish together.
GROUP_SECONDS = {
    MILVUS_GROUP: 359,
    "test_dagster_truth": 149,
    "test_model_servers": 140,
    "test_reliability_names": 103,
    "test_ui": 97,
    "test_rehearsal": 85,
    "test_web": 81,
    "test_reliability_delete": 80,
    "test_device_check": 73,
    "test_signals": 56,
    "test_server": 55,
    "test_automation": 50,
    "test_cli_errors": 49,
    "test_search_under_load": 44,
    "test_concurrency": 43,
    "test_ui_status": 41,
    "test_reliability_pool": 37,
    "test_web_security": 35,
    "test_embedding": 31,
    "test_families": 30,
    "test_documents": 22,
    "test_definitions": 22,
    "test_fidelity": 18,
    "test_bulk": 14,
    "test_render_pool": 14,
}


def _group_weight(group: str) -> int:
    return GROUP_SECONDS.get(group, 10)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per run: under xdist, the workers share it through their common temporary root."""
    from filelock import FileLock

    from colqwen_pipeline.embedding.tiny import build_tiny_model, is_tiny_model

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-N/: the same for every worker of this run
    directory = root / "models" / "tiny-colqwen2.5"
    with FileLock(str(root / "tiny-model.lock")):
        if not is_tiny_model(directory):
            build_tiny_model(directory)
    return directory


@pytest.fixture(autouse=True)
def _dagster_home_as_it_was() -> Iterator[None]:
    """``defs.instance.dagster_instance`` sets DAGSTER_HOME for its process (the CLI's behaviour): put it
    back after each test, so a later test's subprocesses do not inherit another test's instance."""
    before = os.environ.get("DAGSTER_HOME")
    yield
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before


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
    """Run ``work`` in ``count`` threads at once, all within ``timeout_s``; returns what they raised,
    as reprs, and one entry per thread still running at the deadline (a hang is a failure too)."""
    errors: list[str] = []

    def guarded() -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - the caller asserts there is none
            errors.append(repr(error))

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(count)]  # a hung one can't block exit
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    return errors + ([f"{hung} of {count} thread(s) still running after {timeout_s:g} s"] if hung else [])


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


_milvus_server_running = contextlib.ExitStack()  # closed when this worker's Milvus group is done


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus 2.3.5 standalone server (~30 s to start) for the Milvus group, which runs whole on
    one worker: stopped after its last test (an idle server still takes ~12% of a core), or at the end."""
    from colqwen_pipeline_tests.milvus_server import milvus_server

    yield _milvus_server_running.enter_context(milvus_server(tmp_path_factory.mktemp("milvus-server") / "data"))
    _milvus_server_running.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # the test's fixtures first: module fixtures may still drop their collections on the server
    if _group_of(item) == MILVUS_GROUP and (nextitem is None or _group_of(nextitem) != MILVUS_GROUP):
        _milvus_server_running.close()


def unique_collection(prefix: str = "t") -> str:
    """A collection name of its own on the shared server."""
    import uuid

    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With COLQWEN_TEST_CPU_LOG=path, one JSON line per test: its CPU seconds, this process's and its
    waited-for children's (servers a fixture stops count where they stop). The suite's floor on 2 cores
    is the sum over 2, whatever the load, so this says where the time goes when wall times are noisy."""
    path = os.environ.get("COLQWEN_TEST_CPU_LOG")
    if not path:
        yield
        return
    import json
    import resource

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    start_cpu, start_wall = cpu(), time.monotonic()
    yield
    wall_s = time.monotonic() - start_wall
    record = {"test": item.nodeid, "cpu_s": round(cpu() - start_cpu, 2), "wall_s": round(wall_s, 2)}
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")
