"""``colqwen-pipeline bench ingest``: what a bulk ingest costs beyond rendering and embedding.

In a temporary state directory with generated documents (PDFs of scanned-looking pages), it times,
side by side in one run:
- ``render_alone_s``: the pipeline's own render stage over every document, nothing else
  (``run_documents(..., until="pages")``: the same render workers and code path as the ingest);
- ``embed_alone_s``: every page through the loaded model at the configured batch size;
- ``first_s``: ``colqwen-pipeline ingest`` of the whole inbox (a subprocess: imports, model
  load, Dagster runs and Milvus included), then ``unchanged_s`` (the same again) and
  ``changed_1pct_s`` (after rewriting 1% of the documents, at least one).
``first_vs_sum = first_s / (render_alone_s + embed_alone_s)``: 1.0 means the ingest costs exactly its
two working stages done one after the other; ``first_vs_critical_path = first_s / max(...)``: 1.0
means it costs only its slower stage, the two fully overlapped.

``--model null`` embeds with ``NullEmbedder`` (embedding/null.py, no forward pass): ``first_s`` is
then the CPU side alone, and ``cpu_pages_per_s_per_core`` is its rate per core of this process.
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


def bench_ingest(docs: int = 200, pages_per_doc: int = 1, model: str = "tiny") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="colqwen-bench-ingest-") as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        paths = [make_document(inbox / f"doc-{i:05d}.pdf", pages_per_doc, i) for i in range(docs)]
        env = os.environ | {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(inbox)}
        env.pop("DAGSTER_HOME", None)
        env.pop("COLQWEN_REDIS_URL", None)
        if model == "null":
            env["COLQWEN_MODEL"] = str(_null_model(root, env))
        render_s, pages = _render_alone(env | {"COLQWEN_HOME": str(root / "render-alone")})
        embed_s = _embed_alone(pages, env)
        first = _cli_ingest(env)
        unchanged = _cli_ingest(env)
        for i in range(max(1, docs // 100)):
            make_document(paths[i], pages_per_doc, seed=docs + i)
        changed = _cli_ingest(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "model": model,
        "docs": docs,
        "pages": len(pages),
        "cores": cores,
        "render_workers": _settings(env).render_workers,
        "first_s": first["seconds"],
        "unchanged_s": unchanged["seconds"],
        "changed_1pct_s": changed["seconds"],
        "render_alone_s": round(render_s, 2),
        "embed_alone_s": round(embed_s, 2),
        "first_vs_sum": round(first["seconds"] / (render_s + embed_s), 3),
        "first_vs_critical_path": round(first["seconds"] / max(render_s, embed_s), 3),
        "first_vs_render_alone": round(first["seconds"] / render_s, 3),
        "render_pages_per_s_per_core": round(len(pages) / render_s / cores, 2),
        "cpu_pages_per_s_per_core": round(len(pages) / first["seconds"] / cores, 2) if model == "null" else None,
        "runs": first["runs"],
        "model_loads": first["model_loads"],
        "unchanged_model_loads": unchanged["model_loads"],
        "changed_documents": max(1, docs // 100),
    }


def _null_model(root: Path, env: dict[str, str]) -> Path:
    from colqwen_pipeline.embedding.null import build_null_model
    from colqwen_pipeline.embedding.registry import ensure_tiny_model

    settings = _settings(env)
    return build_null_model(root / "null-model", ensure_tiny_model(settings.tiny_model_dir))


def _settings(env: dict[str, str]):
    from colqwen_pipeline.settings import Settings

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _render_alone(env: dict[str, str]) -> tuple[float, list[Path]]:
    """The ingest's render stage alone, in a state directory of its own (the ingest still renders everything)."""
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.documents.manifest import Manifest
    from colqwen_pipeline.inbox import inbox_files

    settings = _settings(env)
    keys = sorted(inbox_files(settings.inbox))
    started = time.perf_counter()
    report = run_documents(settings, keys, until="pages", say=lambda _: None)
    seconds = time.perf_counter() - started
    if report.failed:
        raise RuntimeError(f"render alone failed: {next(iter(report.failed.values()))}")
    pages: list[Path] = []
    for key in keys:
        folder = settings.pages_dir / key
        pages += [folder / record.file for record in Manifest.read(folder).pages]
    return seconds, pages


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
