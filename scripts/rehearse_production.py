"""Rehearse the production topology of deploy/compose.yaml on this machine, without Docker.

Starts, on loopback ports of its own and in a temporary directory: a Milvus 2.3.5 standalone
server, Redis with a password, Postgres (Debian's binaries) as Dagster's storage with
deploy/dagster.prod.yaml, the model server (`colqwen-pipeline serve`, tiny model), the
dagster-webserver and the dagster-daemon. Then it drops the sample documents into the inbox,
waits until the daemon's inbox sensor has indexed them, searches through the model server's HTTP
API, and stops everything it started. Prints one JSON summary line; exit 0 when every step passed.

    .venv/bin/python scripts/rehearse_production.py [--timeout 600] [--keep]

Needs what `make test` installs: postgresql, redis-server, pip `milvus` and `.[deploy]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from colqwen_pipeline.inbox import document_key  # noqa: E402
from colqwen_pipeline_tests.milvus_server import free_ports, milvus_server, stop_group  # noqa: E402
from colqwen_pipeline_tests.postgres_server import postgres  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLES = REPO / "data" / "inbox"


def say(message: str) -> None:
    print(f"[rehearsal {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def process(name: str, command: list[str], logs: Path, env: dict[str, str], cwd: Path = REPO) -> Iterator[None]:
    """A service in its own process group, stopped with SIGINT (Dagster ignores SIGTERM a while)."""
    log = (logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    say(f"started {name} (pid {proc.pid})")
    try:
        yield
    finally:
        stop_group(proc)
        log.close()
        say(f"stopped {name}")


def wait_for(what: str, probe, timeout_s: float, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - not there yet
            last = error
        else:
            last = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s ({last})")
        time.sleep(interval_s)


# -- the rehearsal ------------------------------------------------------------------------------------
def rehearse(root: Path, timeout_s: float) -> dict:
    started = time.monotonic()
    logs, inbox, home, dagster_home = root / "logs", root / "inbox", root / "state", root / "dagster_home"
    for directory in (logs, inbox, home, dagster_home):
        directory.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.prod.yaml", dagster_home / "dagster.yaml")
    redis_port, pg_port, model_port, web_port = free_ports(4)
    redis_password, pg_password = secrets.token_hex(16), secrets.token_hex(16)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_"))}
    with contextlib.ExitStack() as stack:
        milvus_uri = stack.enter_context(milvus_server(root / "milvus"))
        say(f"milvus server at {milvus_uri}")
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--requirepass", redis_password]
        stack.enter_context(process("redis", [*redis_cmd, "--save", "", "--appendonly", "no"], logs, base_env))
        stack.enter_context(postgres(root, pg_port, "dagster", pg_password, "dagster"))
        say(f"postgres on 127.0.0.1:{pg_port}")
        pipeline_env = base_env | {
            "COLQWEN_HOME": str(home),
            "COLQWEN_INBOX": str(inbox),
            "COLQWEN_MILVUS_URI": milvus_uri,
            "COLQWEN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "COLQWEN_REDIS_PASSWORD": redis_password,
        }
        model_url = f"http://127.0.0.1:{model_port}"
        serve = [str(BIN / "colqwen-pipeline"), "serve", "--host", "127.0.0.1", "--port", str(model_port)]
        stack.enter_context(process("model-server", serve, logs, pipeline_env))
        import httpx

        wait_for("model server", lambda: httpx.get(f"{model_url}/health/ready").status_code == 200, 300)
        dagster_env = pipeline_env | {
            "COLQWEN_MODEL_SERVER_URL": model_url,
            "COLQWEN_SENSOR_INTERVAL_S": "3",
            "COLQWEN_SETTLE_S": "1",
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(pg_port),
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": pg_password,
            "DAGSTER_PG_DB": "dagster",
        }
        web = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"]
        stack.enter_context(process("dagster-webserver", web, logs, dagster_env))
        stack.enter_context(
            process("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], logs, dagster_env)
        )
        web_url = f"http://127.0.0.1:{web_port}"
        wait_for("dagster-webserver", lambda: httpx.get(f"{web_url}/server_info").status_code == 200, 180)
        samples = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
        for name in samples:
            shutil.copy(SAMPLES / name, inbox / name)
        say(f"dropped {len(samples)} documents into the inbox; waiting for the sensor")
        dropped = time.monotonic()
        expected = {document_key(name) for name in samples}

        def indexed() -> set[str] | None:
            hits = httpx.post(f"{model_url}/search", json={"query": "report", "top_k": 50}, timeout=60).json()
            found = {hit["doc_id"] for hit in hits.get("results", [])}
            return found if found >= expected else None

        found = wait_for("documents searchable", indexed, timeout_s - (time.monotonic() - started), interval_s=3)
        searchable_s = round(time.monotonic() - dropped, 1)
        hits = httpx.post(f"{model_url}/search", json={"query": "replace the filter cartridge", "top_k": 3}).json()
        finished = {"SUCCESS", "FAILURE", "CANCELED"}
        runs = wait_for(
            "ingest runs finished", lambda: (r := _runs(web_url)) and all(x["status"] in finished for x in r) and r, 300
        )
    assert all(r["status"] == "SUCCESS" for r in runs if r["jobName"] == "ingest_job"), runs
    return {
        "ok": True,
        "documents": len(expected),
        "searchable_after_s": searchable_s,
        "ingest_runs": sum(r["jobName"] == "ingest_job" for r in runs),
        "top_hit": hits["results"][0]["document"] if hits["results"] else None,
        "indexed": sorted(found),
        "seconds": round(time.monotonic() - started, 1),
    }


def _runs(web_url: str) -> list[dict]:
    import httpx

    query = "{ runsOrError { ... on Runs { results { runId jobName status } } } }"
    answer = httpx.post(f"{web_url}/graphql", json={"query": query}, timeout=30).json()
    return answer["data"]["runsOrError"]["results"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole rehearsal")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="colqwen-rehearsal-"))
    root.chmod(0o755)  # the postgres user must reach its data directory inside
    try:
        summary = rehearse(root, args.timeout)
    except Exception as error:  # noqa: BLE001 - one line, logs kept
        print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}", "logs": str(root / "logs")}))
        return 1
    print(json.dumps(summary))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
