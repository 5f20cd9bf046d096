"""Peak RSS of `colqwen-pipeline serve` under concurrent /embed_image requests of large solid-colour PNGs.

Runs the server twice with the tiny model: with the default pixel budget and with an unbounded one
(the behaviour before the budget), and prints one JSON line per run. Issue 20 item 5.

    .venv/bin/python scripts/bench_server_memory.py --images 8 --clients 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

SIDE = 6245  # 39 Mpx, under the default 40-Mpx per-image cap


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def solid_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def run(budget: int | None, images: int, clients: int, model: Path, home: Path) -> dict[str, object]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")}
    env |= {"COLQWEN_HOME": str(home), "COLQWEN_MODEL": str(model), "COLQWEN_SERVER_PIXEL_WAIT_S": "600"}
    if budget is not None:
        env["COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT"] = str(budget)
    server = subprocess.Popen(
        [sys.executable, "-m", "colqwen_pipeline.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while httpx.get(f"{url}/health/ready").status_code != 200 if _up(url) else True:
            time.sleep(0.3)
        idle = peak_rss_mb(server.pid)
        blobs = [solid_png((i * 7 % 256, 80, 160)) for i in range(images)]
        statuses: list[int] = []

        def client() -> None:
            files = [("images", (f"p{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
            statuses.append(httpx.post(f"{url}/embed_image", files=files, timeout=1800).status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {
            "budget_pixels": budget if budget is not None else "default",
            "images_per_request": images,
            "clients": clients,
            "request_mb": round(sum(map(len, blobs)) / 2**20, 2),
            "statuses": statuses,
            "idle_peak_rss_mb": round(idle),
            "peak_rss_mb": round(peak_rss_mb(server.pid)),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/health/live")
        return True
    except httpx.TransportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--budgets", type=int, nargs="*", default=[], help="pixel budgets to try after the default")
    args = parser.parse_args()
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="colqwen-bench-") as scratch:
        model = build_tiny_model(Path(scratch) / "tiny-colqwen2.5")
        for budget in (None, *args.budgets, 10**12):  # the default budget, others, then none at all
            print(json.dumps(run(budget, args.images, args.clients, model, Path(scratch) / "var")), flush=True)


if __name__ == "__main__":
    main()
