"""``colqwen-pipeline bench ingest``: what a bulk ingest costs beyond rendering and embedding.

In a temporary state directory with generated documents (PDFs of scanned-looking pages) and the
tiny model, it times, side by side in one run:
- ``render_alone_s``: every document rasterised one after another, nothing else;
- ``embed_alone_s``: every page through the loaded model at the configured batch size;
- ``first_s``: ``colqwen-pipeline ingest`` of the whole inbox (a subprocess: imports, model
  load, Dagster runs and Milvus included), then ``unchanged_s`` (the same again) and
  ``changed_1pct_s`` (after rewriting 1% of the documents, at least one).
``overhead_ratio = first_s / (render_alone_s + embed_alone_s)``: 1.0 means the pipeline costs
exactly its two working stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PAGE = (850, 1100)  # letter at 100 DPI: a typical scan


def make_document(path: Path, pages: int, seed: int) -> Path:
    images = []
    for number in range(pages):
        image = Image.new("RGB", PAGE, "white")
        draw = ImageDraw.Draw(image)
        for line in range(30):
            draw.text((60, 60 + line * 32), f"document {seed} page {number} line {line} " + "lorem ipsum " * 6, "black")
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], resolution=100)
    return path


def bench_ingest(docs: int = 200, pages_per_doc: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="colqwen-bench-ingest-") as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        paths = [make_document(inbox / f"doc-{i:05d}.pdf", pages_per_doc, i) for i in range(docs)]
        env = os.environ | {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(inbox)}
        env.pop("DAGSTER_HOME", None)
        env.pop("COLQWEN_REDIS_URL", None)
        render_s, pages = _render_alone(paths, root / "render-alone", env)
        embed_s = _embed_alone(pages, env)
        first = _cli_ingest(env)
        unchanged = _cli_ingest(env)
        for i in range(max(1, docs // 100)):
            make_document(paths[i], pages_per_doc, seed=docs + i)
        changed = _cli_ingest(env)
    return {
        "docs": docs,
        "pages": len(pages),
        "first_s": first["seconds"],
        "unchanged_s": unchanged["seconds"],
        "changed_1pct_s": changed["seconds"],
        "render_alone_s": round(render_s, 2),
        "embed_alone_s": round(embed_s, 2),
        "overhead_ratio": round(first["seconds"] / (render_s + embed_s), 3),
        "runs": first["runs"],
        "model_loads": first["model_loads"],
        "unchanged_model_loads": unchanged["model_loads"],
        "changed_documents": max(1, docs // 100),
    }


def _settings(env: dict[str, str]):
    from colqwen_pipeline.settings import Settings

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _render_alone(paths: list[Path], out: Path, env: dict[str, str]) -> tuple[float, list[Path]]:
    from colqwen_pipeline.documents import rasterize_document

    settings = _settings(env)
    started = time.perf_counter()
    pages: list[Path] = []
    for path in paths:
        manifest = rasterize_document(path, out / path.stem, settings)
        pages += [out / path.stem / record.file for record in manifest.pages]
    return time.perf_counter() - started, pages


def _embed_alone(pages: list[Path], env: dict[str, str]) -> float:
    from colqwen_pipeline.embedding.registry import get_embedder, unload

    settings = _settings(env)
    embedder = get_embedder(settings)  # loaded (and warmed up) before the clock starts
    started = time.perf_counter()
    embedder.embed_images(pages)
    seconds = time.perf_counter() - started
    unload()
    return seconds


def _cli_ingest(env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "colqwen_pipeline.cli", "ingest"], env=env, capture_output=True, text=True
    )
    seconds = round(time.perf_counter() - started, 2)
    if run.returncode != 0:
        raise RuntimeError(f"ingest failed ({run.returncode}): {run.stderr.strip().splitlines()[-3:]}")
    output = run.stdout + run.stderr
    return {
        "seconds": seconds,
        "runs": len(re.findall(r"^run \d+/\d+:", output, re.MULTILINE)),
        "model_loads": output.count("model loaded:"),
    }
