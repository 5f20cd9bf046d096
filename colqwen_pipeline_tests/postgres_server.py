"""A real Postgres server from Debian's binaries on a loopback port, for tests and the production
rehearsal (Dagster's storage in deploy/dagster.prod.yaml). ``root`` must be reachable by the
``postgres`` user when running as root: Postgres refuses to run as root, so it runs as that user."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("Postgres is not installed: `make test` installs it (apt-get install postgresql)")
    return versions[-1].parent


def as_postgres_user(command: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, run it as the `postgres` user the package creates."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres(root: Path, port: int, user: str, password: str, database: str) -> Iterator[None]:
    """Postgres on 127.0.0.1:``port`` under ``root``, with ``user`` (password-only logins) and an
    empty ``database``; stopped at the end."""
    data, sockets = root / "pgdata", root / "pgsock"
    for directory in (data, sockets):
        directory.mkdir()
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
    binaries = postgres_bin()
    pw_file = root / "pgpass.txt"
    pw_file.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(pw_file, "postgres", "postgres")
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", user, "--pwfile", str(pw_file), "-A", "scram-sha-256"]
    subprocess.run(as_postgres_user(initdb), check=True, capture_output=True)
    pw_file.unlink()
    options = f"-p {port} -k {sockets} -h 127.0.0.1"
    start = [
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(sockets / "postgres.log"),
        "-w",
        "start",
    ]
    subprocess.run(as_postgres_user(start), check=True, capture_output=True)
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute(f'CREATE DATABASE "{database}"')
        connection.close()
        yield
    finally:
        stop = [str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(as_postgres_user(stop), capture_output=True)
