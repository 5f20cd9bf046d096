"""Real Dagster processes for tests: the webserver (read through the GraphQL API its UI uses) and
the daemon, each started as its command-line program over the environment's ``DAGSTER_HOME``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from colqwen_pipeline_tests.conftest import REPO, free_port
from colqwen_pipeline_tests.milvus_server import stop_group

LOCATION = "colqwen_pipeline.definitions"
LOCATION_LOADED = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"


def program(name: str) -> str:
    """A Dagster command of this project's virtual environment, else of PATH."""
    local = REPO / ".venv" / "bin" / name
    return str(local) if local.exists() else name


class GraphQL:
    """The webserver's GraphQL endpoint: what the UI reads, over HTTP."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return answer["data"]


@contextlib.contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group, logging to ``log``; stop the group at the end
    (``stop_group``: SIGINT first, on which ``dagster dev`` and the daemon stop their children)."""
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            stop_group(process)


def wait_until_served(server: GraphQL, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until the webserver answers and has loaded the project's code location."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            entries = server.graphql(LOCATION_LOADED)["workspaceOrError"]["locationEntries"]
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                return
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@contextlib.contextmanager
def webserver(log_dir: Path) -> Iterator[GraphQL]:
    """``dagster-webserver`` over this environment's DAGSTER_HOME, once the project is loaded."""
    port, log = free_port(), log_dir / "dagster-webserver.log"
    command = [program("dagster-webserver"), "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)]
    with started(command, log) as process:
        server = GraphQL(port)
        wait_until_served(server, process, log)
        yield server


@contextlib.contextmanager
def daemon(log_dir: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` over this environment's DAGSTER_HOME."""
    with started([program("dagster-daemon"), "run", "-m", LOCATION], log_dir / "dagster-daemon.log") as process:
        yield process
