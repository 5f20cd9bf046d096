"""A real Milvus 2.3.5 standalone server (PyPI ``milvus``) on free loopback ports, for tests.

``milvus-server`` binds its proxy on every interface: the tests only ever talk to 127.0.0.1, and
the server gets its own ports and data directory so a test run and a user's server can coexist.
Stopped with SIGINT to its process group (it ignores SIGTERM for a while)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PORT_FLAGS = (
    "--proxy-port",
    "--etcd-port",
    "--root-coord-port",
    "--proxy-internal-port",
    "--query-coord-port",
    "--query-node-port",
    "--index-coord-port",
    "--index-node-port",
    "--data-coord-port",
    "--data-node-port",
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_binary() -> str | None:
    local = Path(sys.executable).parent / "milvus-server"
    return str(local) if local.exists() else shutil.which("milvus-server")


@contextlib.contextmanager
def milvus_server(data_dir: Path, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Start a server, wait until it answers, yield its URI, stop it."""
    binary = server_binary()
    if binary is None:
        raise RuntimeError("milvus-server is not installed: `make test` installs it (pip install milvus==2.3.5)")
    ports = free_ports(len(PORT_FLAGS) + 1)
    command = [binary, "--data", str(data_dir)]
    for flag, port in zip(PORT_FLAGS, ports[:-1], strict=True):
        command += [flag, str(port)]
    # The embedded etcd's peer port (2380) has no flag: without its own, a second server on the
    # machine fails with "bind: address already in use". Milvus reads ETCD_CONFIG_PATH from the env.
    etcd_port, peer_port = ports[PORT_FLAGS.index("--etcd-port")], ports[-1]
    etcd_config = data_dir.parent / f"{data_dir.name}-etcd.yaml"
    etcd_config.write_text(
        f"name: default\n"
        f"listen-client-urls: http://127.0.0.1:{etcd_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
    )
    env = os.environ | {"ETCD_CONFIG_PATH": str(etcd_config)}
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{ports[0]}"
    try:
        _wait_ready(uri, process, start_timeout_s, data_dir.parent / f"{data_dir.name}.log")
        yield uri
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen) -> None:
    """SIGINT to the process group (Milvus and Dagster ignore SIGTERM for a while), SIGKILL after 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _wait_ready(uri: str, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"milvus-server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            client = MilvusClient(uri=uri, timeout=5)
            client.list_collections()
            client.close()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"milvus-server did not answer at {uri} in {timeout_s:.0f} s") from None
            time.sleep(1)
