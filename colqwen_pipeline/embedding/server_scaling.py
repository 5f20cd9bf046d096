"""Model servers as processes, and what N of them give against one.

``start_serve``/``stop_serve`` run `colqwen-pipeline serve` with only the ``COLQWEN_*`` settings given
(the rehearsal, scripts/rehearse_model_servers.py, uses them too). ``main`` is the device check's
``servers`` mode (``scripts/device_check.sh servers``): the same pages through 1 server and then
through N, one per GPU (``CUDA_VISIBLE_DEVICES``), all through one ``RemoteEmbedder`` as the
pipeline uses them, side by side in one run. It writes ``server_scaling.json`` to ``--out`` and
prints it. With ``--model tiny --device cpu`` it runs on any machine (the test's CPU path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ServeProcess:
    process: subprocess.Popen
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(env: dict[str, str], log: Path, port: int = 0) -> ServeProcess:
    """`serve` on 127.0.0.1 in its own process group, not waited for. COLQWEN_* come only from ``env``
    (with anything else it adds, such as CUDA_VISIBLE_DEVICES), never from this process."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | env
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "colqwen_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServeProcess(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: ServeProcess, timeout_s: float = 300.0) -> None:
    """Until /health/ready answers READY; a server that exits or fails to load raises with its log's end."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve at {server.url} exited {server.process.returncode}: {_tail(server.log)}")
        with contextlib.suppress(httpx.TransportError, ValueError):
            response = httpx.get(f"{server.url}/health/ready", timeout=5)
            if response.status_code == 200:
                return
            if response.json().get("status") == "FAILED":
                raise RuntimeError(f"serve at {server.url} failed to load: {response.json().get('detail')}")
        time.sleep(0.3)
    raise RuntimeError(f"serve at {server.url} not READY after {timeout_s:.0f} s: {_tail(server.log)}")


def stop_serve(server: ServeProcess, sig: int = signal.SIGTERM) -> None:
    """The server's whole process group; SIGKILL is what the rehearsal's crash sends."""
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, sig)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)


@contextlib.contextmanager
def serving(envs: list[dict[str, str]], logs: Path) -> Iterator[list[ServeProcess]]:
    """One READY server per entry of ``envs``, stopped on the way out."""
    servers: list[ServeProcess] = []
    try:
        for i, env in enumerate(envs):
            servers.append(start_serve(env, logs / f"serve-{i}.log"))
        for server in servers:
            wait_ready(server)
        yield servers
    finally:
        for server in servers:
            stop_serve(server)


def served(url: str, key: str = "") -> dict[str, Any]:
    """A server's own counts (/info ``served``)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/info", headers=headers, timeout=10).json()["served"]


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


# -- 1 server against N ----------------------------------------------------------------------------
def gpu_count() -> int:
    """GPUs nvidia-smi lists (no torch import here); 0 without a driver."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def server_settings(config: dict[str, Any], model: Path, index: int) -> dict[str, str]:
    cuda = config["device"].startswith("cuda")
    return {
        "COLQWEN_MODEL": str(model),
        "COLQWEN_HOME": str(Path(config["work"]) / f"serve-{index}"),
        "COLQWEN_DEVICE": "cuda" if cuda else config["device"],
        "COLQWEN_PRECISION": "bf16" if cuda else "auto",
        "COLQWEN_BATCH_SIZE": str(config["batch"]),
        "COLQWEN_SERVER_MAX_IMAGES": str(config["request_pages"]),
    }


def device_env(config: dict[str, Any], index: int) -> dict[str, str]:
    """Server ``index`` sees one GPU (round-robin when there are more servers than GPUs); none on a CPU."""
    if not config["device"].startswith("cuda"):
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_VISIBLE_DEVICES": str(index % max(config["gpus"], 1))}


def measure(config: dict[str, Any], model: Path, pages: list[Path], count: int) -> dict[str, Any]:
    """Pages/s of ``count`` servers through one client, after a warm-up call that reaches each."""
    from colqwen_pipeline.embedding.remote import RemoteEmbedder

    logs = Path(config["work"]) / f"logs-{count}"
    envs = [server_settings(config, model, i) | device_env(config, i) for i in range(count)]
    with serving(envs, logs) as servers:
        embedder = RemoteEmbedder(",".join(s.url for s in servers), wait_s=60)
        embedder.embed_images(pages[: config["request_pages"] * count])  # warm-up: each server once
        before = [served(s.url)["images"] for s in servers]
        started = time.perf_counter()
        embedder.embed_images(pages)
        seconds = time.perf_counter() - started
        per_server = [served(s.url)["images"] - b for s, b in zip(servers, before, strict=True)]
        embedder.close()
    return {
        "servers": count,
        "pages": len(pages),
        "seconds": round(seconds, 2),
        "pages_per_s": round(len(pages) / seconds, 2),
        "pages_per_server": per_server,
        "visible_devices": [device_env(config, i)["CUDA_VISIBLE_DEVICES"] for i in range(count)],
    }


def run(config: dict[str, Any]) -> dict[str, Any]:
    from colqwen_pipeline.embedding import gpu_check

    model = gpu_check.model_dir(config)
    build = gpu_check.build(config)  # full-random on a GPU, the tiny model on a CPU
    pages = gpu_check.page_files(config)
    one = measure(config, model, pages, 1)
    many = measure(config, model, pages, config["servers"])
    return {
        "kind": "server_scaling",
        "model": config["model"],
        "device": config["device"],
        "gpus": config["gpus"],
        "build": build,
        "one": one,
        "many": many,
        "speedup": round(many["pages_per_s"] / one["pages_per_s"], 2),
    }


def parse(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="device_check.sh servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "device-check-out", help="default $OUT")
    parser.add_argument("--model", choices=["full-random", "tiny"], default="full-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", default="", help="scratch: model, pages, server state (default: under /tmp)")
    parser.add_argument("--servers", type=int, default=0, help="N (default: one per GPU, at least 2)")
    parser.add_argument("--pages", type=int, default=256, help="pages per measurement")
    parser.add_argument("--batch", type=int, default=8, help="each server's COLQWEN_BATCH_SIZE")
    parser.add_argument("--request-pages", type=int, default=32, help="pages per request (COLQWEN_SERVER_MAX_IMAGES)")
    config = vars(parser.parse_args(argv))
    config["gpus"] = gpu_count() if config["device"].startswith("cuda") else 0
    config["servers"] = config["servers"] or max(config["gpus"], 2)
    config["work"] = config["work"] or f"/tmp/colqwen-server-scaling-{os.getpid()}"
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse(sys.argv[1:] if argv is None else argv)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = run(config)
    except Exception as error:  # noqa: BLE001 - one line in the report, whatever failed
        report = {"kind": "server_scaling", "error": f"{type(error).__name__}: {str(error).strip()[:500]}"}
    report["config"] = config
    text = json.dumps(report, indent=1)
    (out / "server_scaling.json").write_text(text + "\n")
    print(text)
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
