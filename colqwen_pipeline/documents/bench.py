"""Benchmark: our guarded, parallel rasteriser vs pdf2image.convert_from_path with its defaults.

Each side runs in its own fresh Python process. Peak RSS is the largest *sum* of RSS over that
process and all its descendants (our workers, pdf2image's pdftoppm), sampled every 10 ms with psutil.
Throughput is pages ÷ the time the child spent in the rendering call itself (imports excluded on
both sides; our worker start-up is included, it is part of our cost). Same PDF, same DPI, PNG out.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

DPI = 200
SAMPLE_S = 0.01

OURS = """
import json, sys, time
from pathlib import Path
from colqwen_pipeline.documents import rasterize_document
from colqwen_pipeline.settings import Settings
settings = Settings(_env_file=None)
start = time.perf_counter()
manifest = rasterize_document(Path(sys.argv[1]), Path(sys.argv[2]), settings, dpi=int(sys.argv[3]))
print(json.dumps({"pages": len(manifest.pages), "seconds": time.perf_counter() - start}))
"""

PDF2IMAGE_DEFAULT = """
import json, sys, time
from pathlib import Path
from pdf2image import convert_from_path
start = time.perf_counter()
pages = convert_from_path(sys.argv[1], dpi=int(sys.argv[3]))
out = Path(sys.argv[2]); out.mkdir()
for i, page in enumerate(pages, 1):
    page.save(out / f"page-{i:04d}.png")
print(json.dumps({"pages": len(pages), "seconds": time.perf_counter() - start}))
"""


def make_bench_pdf(path: Path, pages: int) -> Path:
    """A4 pages with text, a table and drawn shapes: a typical business document."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    width, height = A4
    for n in range(1, pages + 1):
        c.setFont("Helvetica-Bold", 20)
        c.drawString(60, height - 70, f"Quarterly report — page {n}")
        c.setFont("Helvetica", 10)
        for line in range(18):
            c.drawString(60, height - 100 - 13 * line, f"Line {line + 1}: revenue, costs and margins " * 2)
        _table(c, 60, height - 560, rows=12, cols=5)
        c.setFillColor(colors.HexColor("#3366cc"))
        for i in range(6):  # a little bar chart
            c.rect(340 + 30 * i, 80, 20, 30 + 17 * ((n + i) % 7), fill=1, stroke=0)
        c.setFillColor(colors.orange)
        c.circle(180, 140, 60, fill=1)
        c.setFillColor(colors.black)
        c.showPage()
    c.save()
    return path


def _table(c: Any, x: float, y: float, rows: int, cols: int) -> None:
    cell_w, cell_h = 95, 18
    for r in range(rows + 1):
        c.line(x, y + r * cell_h, x + cols * cell_w, y + r * cell_h)
    for k in range(cols + 1):
        c.line(x + k * cell_w, y, x + k * cell_w, y + rows * cell_h)
    for r in range(rows):
        for k in range(cols):
            c.drawString(x + 4 + k * cell_w, y + 5 + r * cell_h, f"R{r + 1}C{k + 1} {r * k * 3.5:.1f}")


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += p.memory_info().rss
    return total


def _measure(script: str, pdf: Path, out: Path) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(pdf), str(out), str(DPI)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, _tree_rss(ps))
        time.sleep(SAMPLE_S)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {stderr.strip().splitlines()[-1:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {
        "pages_per_s": round(result["pages"] / result["seconds"], 2),
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def bench_rasterize(pages: int = 100) -> dict[str, Any]:
    """Render one generated ``pages``-page PDF both ways at the same DPI and compare."""
    with tempfile.TemporaryDirectory(prefix="colqwen-bench-") as tmp:
        pdf = make_bench_pdf(Path(tmp) / "bench.pdf", pages)
        ours = _measure(OURS, pdf, Path(tmp) / "ours")
        theirs = _measure(PDF2IMAGE_DEFAULT, pdf, Path(tmp) / "theirs")
    return {
        "pages": pages,
        "dpi": DPI,
        "ours": ours,
        "pdf2image_default": theirs,
        "speedup": round(ours["pages_per_s"] / theirs["pages_per_s"], 2),
        "memory_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
        "peak_rss": "max over time of the summed RSS of the process tree (parent + workers/pdftoppm)",
    }


if __name__ == "__main__":
    print(json.dumps(bench_rasterize(int(sys.argv[1]) if len(sys.argv) > 1 else 100), indent=1))
