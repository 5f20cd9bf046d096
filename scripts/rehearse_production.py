"""Rehearse the production topology of deploy/compose.yaml on this machine, without Docker.

Starts, on loopback ports of its own and in a temporary directory: a Milvus 2.3.5 standalone
server, Redis with a password, Postgres (Debian's binaries) as Dagster's storage with
deploy/dagster.prod.yaml, the model server (`colqwen-pipeline serve`, tiny model), the
dagster-webserver and the dagster-daemon. The three project services get the environment and the
command that deploy/compose.yaml gives them (API keys on; container paths mapped through each
service's own volumes, so a folder a service does not mount is missing here too), on loopback
ports; NOT_AS_IN_COMPOSE lists the few settings that differ and why. Then it drops the sample documents into the inbox,
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
import re
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


# -- the compose file, read as Docker reads it ----------------------------------------------------------
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")
# What cannot be as in compose on this machine (no GPU, no weights, no binding beyond loopback), and
# what only makes the rehearsal quicker; reported in the summary.
NOT_AS_IN_COMPOSE = {
    "model-server": {
        "COLQWEN_MODEL": None,
        "COLQWEN_BASE_MODEL": None,
        "COLQWEN_DEVICE": "cpu",
        "COLQWEN_PRECISION": "auto",
    },
    "dagster": {"COLQWEN_SENSOR_INTERVAL_S": "3", "COLQWEN_SETTLE_S": "1"},
}


def substitute(value: str, variables: dict[str, str]) -> str:
    """``${X}``, ``${X:-default}``, ``${X:?message}`` as docker compose expands them."""

    def one(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if variables.get(name):
            return variables[name]
        if kind == "?":
            raise ValueError(f"compose needs {name}: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(one, str(value))


def compose_service(compose: dict, name: str, variables: dict[str, str], volumes: dict[str, Path], root: Path):
    """(environment, command) of a compose service, with paths inside the container mapped to the
    host folders its ``volumes:`` mount there; a path it does not mount maps to a missing folder,
    as the container would see it."""
    service = compose["services"][name]
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = substitute(volume, variables).split(":")[:2]
        mounts[target] = volumes.get(source) or (REPO / "deploy" / source).resolve()
    env: dict[str, str] = {}
    for key, value in service.get("environment", {}).items():
        value = substitute(value, variables)
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target + "/"):
                value = str(mounts[target]) + value[len(target) :]
                break
        else:
            if value.startswith("/"):
                value = str(root / "not-mounted" / name) + value
        env[key] = value
    return env, [substitute(part, variables) for part in service.get("command", [])]


def listen_locally(command: list[str], host_flag: str, port_flag: str, port: int) -> list[str]:
    """The compose command on a loopback port of this machine (never beyond loopback here)."""
    command = list(command)
    command[command.index(host_flag) + 1] = "127.0.0.1"
    command[command.index(port_flag) + 1] = str(port)
    return command


def check_serve_starts(env: dict[str, str], command: list[str]) -> None:
    """What `serve` checks before it binds, with the compose host: keys off loopback, or --insecure."""
    from colqwen_pipeline.service.auth import ApiKeys, require_keys_off_loopback
    from colqwen_pipeline.settings import Settings

    fields = {k.removeprefix("COLQWEN_").lower(): v for k, v in env.items() if k.startswith("COLQWEN_SERVER_API_KEYS")}
    keys = ApiKeys.from_settings(Settings(_env_file=None, **fields))
    require_keys_off_loopback(command[command.index("--host") + 1], keys, "--insecure" in command)


def translate(env: dict[str, str], addresses: dict[str, str]) -> dict[str, str]:
    """Compose's service names (milvus:19530 ...) replaced by the rehearsal's loopback addresses."""
    for compose_address, local in addresses.items():
        env = {key: value.replace(compose_address, local) for key, value in env.items()}
    return env


# -- the rehearsal ------------------------------------------------------------------------------------
def rehearse(root: Path, timeout_s: float) -> dict:
    import yaml

    started = time.monotonic()
    logs, inbox, home, dagster_home = root / "logs", root / "inbox", root / "state", root / "dagster_home"
    for directory in (logs, inbox, home, dagster_home):
        directory.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.prod.yaml", dagster_home / "dagster.yaml")
    redis_port, pg_port, model_port, web_port = free_ports(4)
    key = secrets.token_urlsafe(24)
    variables = {
        "REDIS_PASSWORD": secrets.token_hex(16),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "COLQWEN_MODEL_SERVER_KEY": key,
        "COLQWEN_INBOX_DIR": str(inbox),
    }
    volumes = {"colqwen-state": home}
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_"))}
    auth = {"Authorization": f"Bearer {key}"}
    with contextlib.ExitStack() as stack:
        milvus_uri = stack.enter_context(milvus_server(root / "milvus"))
        say(f"milvus server at {milvus_uri}")
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        redis_cmd += ["--requirepass", variables["REDIS_PASSWORD"], "--save", "", "--appendonly", "no"]
        stack.enter_context(process("redis", redis_cmd, logs, base_env))
        stack.enter_context(postgres(root, pg_port, "dagster", variables["POSTGRES_PASSWORD"], "dagster"))
        say(f"postgres on 127.0.0.1:{pg_port}")
        model_url = f"http://127.0.0.1:{model_port}"
        addresses = {
            "http://milvus:19530": milvus_uri,
            "redis://redis:6379": f"redis://127.0.0.1:{redis_port}",
            "http://model-server:8005": model_url,
        }

        def service(name: str, overrides: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
            env, command = compose_service(compose, name, variables, volumes, root)
            env = translate(env, addresses) | {k: v for k, v in overrides.items() if v is not None}
            return {k: v for k, v in env.items() if overrides.get(k, "") is not None}, command

        server_env, serve = service("model-server", NOT_AS_IN_COMPOSE["model-server"])
        check_serve_starts(server_env, serve)  # as the container would: it binds beyond loopback
        serve = listen_locally([str(BIN / serve[0]), *serve[1:]], "--host", "--port", model_port)
        stack.enter_context(process("model-server", serve, logs, base_env | server_env))
        import httpx

        wait_for("model server", lambda: httpx.get(f"{model_url}/health/ready").status_code == 200, 300)
        assert httpx.get(f"{model_url}/info").status_code == 401, "the model server answers without a key"
        page = httpx.get(model_url, headers=auth | {"accept": "text/html"}, timeout=60)
        assert page.status_code == 200, f"the model server's page: HTTP {page.status_code} {page.text[:200]}"
        dagster_overrides = NOT_AS_IN_COMPOSE["dagster"] | {"DAGSTER_HOME": str(dagster_home)}
        dagster_overrides |= {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg_port)}
        web_env, web = service("dagster-webserver", dagster_overrides)
        web = listen_locally([str(BIN / web[0]), *web[1:]], "-h", "-p", web_port)
        stack.enter_context(process("dagster-webserver", web, logs, base_env | web_env))
        daemon_env, daemon = service("dagster-daemon", dagster_overrides)
        stack.enter_context(process("dagster-daemon", [str(BIN / daemon[0]), *daemon[1:]], logs, base_env | daemon_env))
        web_url = f"http://127.0.0.1:{web_port}"
        # The whole rehearsal's budget, not a fixed 180 s: under a full test suite's load on 2 cores
        # the webserver once took 183 s to load the code location.
        up = timeout_s - (time.monotonic() - started)
        wait_for("dagster-webserver", lambda: httpx.get(f"{web_url}/server_info").status_code == 200, up)
        samples = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
        for name in samples:
            shutil.copy(SAMPLES / name, inbox / name)
        say(f"dropped {len(samples)} documents into the inbox; waiting for the sensor")
        dropped = time.monotonic()
        expected = {document_key(name) for name in samples}

        def search(query: str, top_k: int) -> dict:
            answer = httpx.post(f"{model_url}/search", json={"query": query, "top_k": top_k}, headers=auth, timeout=60)
            return answer.json()

        def indexed() -> set[str] | None:
            found = {hit["doc_id"] for hit in search("report", 50).get("results", [])}
            return found if found >= expected else None

        found = wait_for("documents searchable", indexed, timeout_s - (time.monotonic() - started), interval_s=3)
        searchable_s = round(time.monotonic() - dropped, 1)
        hits = search("replace the filter cartridge", 3)
        finished = {"SUCCESS", "FAILURE", "CANCELED"}
        runs = wait_for(
            "ingest runs finished", lambda: (r := _runs(web_url)) and all(x["status"] in finished for x in r) and r, 300
        )
        listed = httpx.get(f"{model_url}/documents", headers=auth, timeout=60).json()["documents"]
    assert all(r["status"] == "SUCCESS" for r in runs if r["jobName"] == "ingest_job"), runs
    return {
        "ok": True,
        "documents": len(expected),
        "searchable_after_s": searchable_s,
        "ingest_runs": sum(r["jobName"] == "ingest_job" for r in runs),
        "top_hit": hits["results"][0]["document"] if hits["results"] else None,
        "indexed": sorted(found),
        "listed_by_the_model_server": sorted(d["doc_id"] for d in listed if d["status"] == "indexed"),
        "api_keys": "on (the model server answered /info without a key with 401)",
        "not_as_in_compose": NOT_AS_IN_COMPOSE,
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
