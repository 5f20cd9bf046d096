"""The deployment files, checked without a Docker engine (none runs here): the compose file and
the production dagster.yaml parsed and validated, the Dockerfile read instruction by instruction,
and every cross-reference between them and the code checked."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from colqwen_pipeline_tests.conftest import REPO

DEPLOY = REPO / "deploy"
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")
PG_ENV = {
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_PORT": "5433",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


# -- compose -------------------------------------------------------------------------------------
def test_compose_runs_every_service_of_the_deployment_with_a_health_check(compose: dict) -> None:
    services = compose["services"]

    assert set(services) == {"milvus", "redis", "postgres", "model-server", "dagster-webserver", "dagster-daemon"}
    assert all("healthcheck" in s and s["healthcheck"]["test"] for s in services.values())
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        named = [v.split(":")[0] for v in service.get("volumes", []) if not v.startswith(("$", ".", "/"))]
        assert set(named) <= set(compose["volumes"]), name


def test_compose_holds_no_secret_and_requires_each_from_the_environment(compose: dict) -> None:
    required = set(REQUIRED_VARIABLE.findall((DEPLOY / "compose.yaml").read_text()))
    example = (DEPLOY / ".env.example").read_text()

    assert {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "COLQWEN_MODEL_SERVER_KEY"} <= required
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET.search(key):
                assert REQUIRED_VARIABLE.fullmatch(str(value)), f"{name}.{key} must come from the environment"
        assert "requirepass" not in str(service.get("command", "")) or "$$REDIS_PASSWORD" in str(service["command"])
    for variable in required:
        assert re.search(rf"^{variable}=$", example, re.MULTILINE), f"{variable} missing (or filled in) in .env.example"


def test_pipeline_services_reach_the_model_server_milvus_redis_and_postgres(compose: dict) -> None:
    services = compose["services"]
    server = services["model-server"]
    port = server["command"][server["command"].index("--port") + 1]

    for name in ("dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert env["COLQWEN_MODEL_SERVER_URL"] == f"http://model-server:{port}"
        assert env["COLQWEN_MILVUS_URI"].startswith("http://milvus:")
        assert env["COLQWEN_REDIS_URL"].startswith("redis://redis:")
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert set(PG_ENV) <= set(env)
    assert "COLQWEN_MODEL_SERVER_URL" not in server["environment"]  # the server loads the model itself
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/health/ready" in " ".join(server["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def compose_env(compose: dict, name: str) -> tuple[dict[str, str], list[str], dict[str, object]]:
    """A service's environment and command as compose expands them with .env.example filled in,
    and its mounts (target -> source)."""
    from scripts.rehearse_production import compose_service, substitute

    example = (DEPLOY / ".env.example").read_text()
    variables = {v: f"{v.lower()}-0123456789abcdef" for v in re.findall(r"^(\w+)=$", example, re.MULTILINE)}
    env, command = compose_service(compose, name, variables, {}, Path("/nowhere"))
    raw = {k: substitute(v, variables) for k, v in compose["services"][name]["environment"].items()}
    volumes = [re.fullmatch(r"(.+):(/[^:]*)(:r[ow])?", v) for v in compose["services"][name].get("volumes", [])]
    mounts = {m.group(2): m.group(1) for m in volumes}
    return raw, command, mounts


def test_the_model_server_command_passes_serve_s_key_check(compose: dict) -> None:
    """`serve --host 0.0.0.0` without keys (and without --insecure) is refused: compose must give keys."""
    from scripts.rehearse_production import check_serve_starts

    env, command, _ = compose_env(compose, "model-server")

    assert command[command.index("--host") + 1] == "0.0.0.0"  # reachable from the other containers
    check_serve_starts(env, command)  # raises AuthSetupError without keys


def test_the_pipeline_sends_a_key_the_model_server_accepts(compose: dict) -> None:
    server_env, _, _ = compose_env(compose, "model-server")
    served = server_env["COLQWEN_SERVER_API_KEYS"].split(",")

    for name in ("dagster-webserver", "dagster-daemon"):
        env, _, _ = compose_env(compose, name)
        assert env["COLQWEN_MODEL_SERVER_KEY"] in served, name


def test_every_service_that_reads_the_inbox_mounts_it(compose: dict) -> None:
    """`serve` lists the inbox on its page (a missing one answered / with 500) and writes uploads there."""
    for name, service in compose["services"].items():
        inbox = service.get("environment", {}).get("COLQWEN_INBOX")
        if inbox is None:
            continue
        _, _, mounts = compose_env(compose, name)
        assert inbox in mounts, f"{name} reads COLQWEN_INBOX={inbox} but mounts nothing there"
        assert "INBOX_DIR" in mounts[inbox], name


def test_compose_builds_this_repository(compose: dict) -> None:
    build = compose["services"]["model-server"]["build"]

    assert ((DEPLOY / build["context"]).resolve() / build["dockerfile"]) == REPO / "Dockerfile"


def test_docker_compose_accepts_the_file_when_a_client_is_installed(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` client here: the PyYAML checks above stand in for it")
    env = tmp_path / ".env"
    env.write_text("REDIS_PASSWORD=x\nPOSTGRES_PASSWORD=y\n")
    command = [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env), "config", "-q"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- Dockerfile ----------------------------------------------------------------------------------
def test_dockerfile_builds_a_cuda_image_run_by_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    args = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    base = next(arg for kind, arg in instructions if kind == "FROM")
    env = " ".join(arg for kind, arg in instructions if kind == "ENV")
    user = [arg for kind, arg in instructions if kind == "USER"]

    assert "cuda" in args.get(base.strip("${}"), base)
    assert user and user[-1] not in {"root", "0"}
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")  # no root step after
    assert "DAGSTER_HOME=/opt/dagster/home" in env
    assert any(kind == "COPY" and arg.endswith("${DAGSTER_HOME}/dagster.yaml") for kind, arg in instructions)


def test_dockerfile_health_check_and_command_use_the_model_server() -> None:
    from colqwen_pipeline.service.app import create_app

    instructions = dict(dockerfile_instructions())
    routes = {route.path for route in create_app().routes}

    health_path = re.search(r"http://127\.0\.0\.1:\S+?(/[\w/-]+)", instructions["HEALTHCHECK"]).group(1)
    assert health_path in routes
    assert instructions["CMD"] == '["colqwen-pipeline", "serve"]'


def test_dockerfile_copies_files_that_exist_and_installs_the_deploy_extra() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    for kind, arg in dockerfile_instructions():
        if kind == "COPY":
            *sources, _ = arg.split()
            assert all((REPO / source).exists() for source in sources), arg
    assert any(kind == "RUN" and 'pip install ".[deploy]"' in arg for kind, arg in dockerfile_instructions())
    assert any(dependency.startswith("dagster-postgres==0.29.") for dependency in extras["deploy"])


# -- production dagster.yaml ---------------------------------------------------------------------
def test_production_instance_keeps_all_storage_in_postgres_from_the_environment(tmp_path, monkeypatch) -> None:
    """deploy/dagster.prod.yaml loaded as the webserver and the daemon load it (``DAGSTER_HOME``),
    against a real Postgres whose address and password come only from the environment: a run's
    history lands in Postgres and nothing in local files."""
    import dagster as dg
    import psycopg2

    from colqwen_pipeline_tests.conftest import free_port
    from colqwen_pipeline_tests.postgres_server import postgres

    config = yaml.safe_load((DEPLOY / "dagster.prod.yaml").read_text())
    database = config["storage"]["postgres"]["postgres_db"]
    assert all(set(value) == {"env"} for key, value in database.items() if key != "scheme")  # no secret in the file
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.prod.yaml", home / "dagster.yaml")
    env = PG_ENV | {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(free_port())}
    for name, value in env.items() | {"DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)

    @dg.asset
    def probe() -> int:
        return 1

    user, password, db = env["DAGSTER_PG_USERNAME"], env["DAGSTER_PG_PASSWORD"], env["DAGSTER_PG_DB"]
    root = Path(tempfile.mkdtemp(prefix="colqwen-pg-"))  # pytest's tmp_path is closed to the postgres user
    root.chmod(0o755)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        cleanup.enter_context(postgres(root, int(env["DAGSTER_PG_PORT"]), user, password, db))
        with dg.DagsterInstance.get() as instance:
            result = dg.materialize([probe], instance=instance)
            assert result.success
            assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        address = {"host": "127.0.0.1", "port": env["DAGSTER_PG_PORT"], "user": user, "dbname": db}
        connection = psycopg2.connect(**address, password=password)
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT run_id FROM runs")
            runs = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,))
            events = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'jobs'")
            schedule_tables = cursor.fetchone()[0]
        connection.close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(**address, password="guess")

    assert runs == [result.run_id] and events > 0 and schedule_tables == 1  # runs, events, schedules
    assert not [path.name for path in home.rglob("*.db")]  # no SQLite storage beside dagster.yaml
