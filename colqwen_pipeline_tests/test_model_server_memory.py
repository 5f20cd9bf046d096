"""The model server's memory under bursts of parallel big-image requests (issue 26 item 7): a real
`colqwen-pipeline serve` with the tiny model, its RSS read from /proc. The pixel budget must bound
the peak (decoded pages, model inputs and answers of every request in flight), and the memory must
go back once the burst is over."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from colqwen_pipeline.service.limits import PEAK_BYTES_PER_PIXEL
from colqwen_pipeline_tests.conftest import one_document_env
from colqwen_pipeline_tests.test_server import SAMPLE, page_png, serving

BUDGET = 8_000_000  # pixels in flight: one 5.8-Mpx page at a time, with its answer
SIDE = 2400  # 5.8 Mpx a page
CLIENTS, ROUNDS = 6, 2
SLACK_MB = 150  # the interpreter's own churn: thread stacks, arenas of small objects, HTTP buffers

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def big_image_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, int]]:
    """`serve` as a user starts it, with an 8-Mpx budget and a wait long enough that nobody is told 503."""
    env = one_document_env(tmp_path_factory.mktemp("memory"), tiny_model_dir, SAMPLE)
    env |= {
        "COLQWEN_SERVER_MAX_PIXELS_IN_FLIGHT": str(BUDGET),
        "COLQWEN_SERVER_MAX_IMAGE_PIXELS": str(BUDGET),
        "COLQWEN_SERVER_PIXEL_WAIT_S": "120",
    }
    with serving(env, tmp_path_factory.mktemp("memory-log") / "serve.log") as (url, process):
        yield url, process.pid


def big_page(n: int) -> bytes:
    """A 5.8-Mpx page of a few hundred KB (lines, not noise: it must fit the request limit)."""
    image = Image.new("RGB", (SIDE, SIDE), (n * 37 % 256, 90, 200))
    draw = ImageDraw.Draw(image)
    for y in range(0, SIDE, 97):
        draw.line((0, y, SIDE, (y * (n + 1)) % SIDE), fill=(y % 256, 0, 0), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def burst(url: str, pages: list[bytes]) -> list[int]:
    """One request per page, all sent at once; their status codes."""
    start, statuses = threading.Barrier(len(pages)), []

    def client(page: bytes) -> None:
        start.wait()
        files = [("images", ("page.png", page, "image/png"))]
        statuses.append(httpx.post(f"{url}/embed_image", files=files, timeout=300).status_code)

    threads = [threading.Thread(target=client, args=(page,)) for page in pages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.slow  # a model server process
def test_parallel_big_images_stay_inside_the_pixel_budget_and_memory_goes_back(big_image_server) -> None:
    url, pid = big_image_server
    warm = httpx.post(f"{url}/embed_image", files=[("images", ("small.png", page_png(), "image/png"))], timeout=60)
    assert warm.status_code == 200, warm.text
    idle = memory_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from now (the load's peak is not ours)
    pages = [big_page(n) for n in range(CLIENTS)]
    bound = BUDGET * PEAK_BYTES_PER_PIXEL / 2**20 + SLACK_MB  # what the documented budget promises

    after_rounds = []
    for _ in range(ROUNDS):
        assert burst(url, pages) == [200] * CLIENTS
        after_rounds.append(memory_mb(pid, "VmRSS") - idle)

    peak = memory_mb(pid, "VmHWM") - idle
    assert peak <= bound, f"peak {peak:.0f} MB over idle, above the budget's {bound:.0f} MB"
    assert max(after_rounds) <= SLACK_MB, f"memory stayed grown after the bursts: {after_rounds} MB over idle"
