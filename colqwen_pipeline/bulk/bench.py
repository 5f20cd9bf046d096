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
means it costs only its slower stage, the two fully overlapped. ``first_engine_s`` is the part of
``first_s`` inside the engine (``run_documents``: render, embed, index, the per-document events);
the rest is the process start, imports, the Dagster run's creation (its planned events) and the
collection checks. ``dagster_events`` counts what Dagster stored for that run.

``--model null`` embeds with ``NullEmbedder`` (embedding/null.py, no forward pass): ``first_s`` is
then the CPU side alone, and ``cpu_pages_per_s_per_core`` is its rate per core of this process. It
does not decode the pages as a model's pre-processing does: the tiny model's run includes that.

``--kind`` says what the documents are (``KINDS``): letter pages scanned at 100 DPI inside PDFs (the
default, as before), PDFs of vector text, or A4 pages scanned at 300 DPI as PNG or JPEG files
(greyscale, as document scanners write text pages; one page per file).
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
A4_300_DPI = (2480, 3508)
KINDS = {"pdf-scan": ".pdf", "pdf-text": ".pdf", "png-scan": ".png", "jpeg-scan": ".jpg"}


def make_document(path: Path, pages: int, seed: int, kind: str = "pdf-scan") -> Path:
    """A generated document of ``kind`` at ``path`` (its suffix: ``KINDS[kind]``)."""
    if kind == "pdf-text":
        path.write_bytes(text_pdf(pages, seed))
    elif kind == "pdf-scan":
        images = [_scan(PAGE, seed, number, lines=30, font=10) for number in range(pages)]
        images[0].save(path, save_all=True, append_images=images[1:], resolution=100)
    else:
        if pages != 1:
            raise ValueError(f"{kind}: one page per file")
        options: dict[str, Any] = {"compress_level": 6} if kind == "png-scan" else {"quality": 85}
        _scan(A4_300_DPI, seed, 0, lines=90, font=30).convert("L").save(path, dpi=(300, 300), **options)
    return path


def _scan(size: tuple[int, int], seed: int, number: int, lines: int, font: int) -> Image.Image:
    """Black lines of text on white, ``font`` pixels high: a page as a scanner sees it."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for line in range(lines):
        text = f"document {seed} page {number} line {line} " + "lorem ipsum " * 6
        draw.text((size[0] // 14, size[0] // 14 + line * (font * 3 + 2)), text, "black", font_size=font)
    return image


def text_pdf(pages: int, seed: int) -> bytes:
    """A PDF of A4 pages of Helvetica text, written by hand (no PDF library needed)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for number in range(pages):
        lines = [
            f"({f'document {seed} page {number} line {i} ' + 'lorem ipsum dolor sit amet ' * 3}) Tj T*"
            for i in range(60)
        ]
        stream = ("BT /F1 10 Tf 12 TL 50 800 Td " + " ".join(lines) + " ET").encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % content
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), pages)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def bench_ingest(
    docs: int = 200, pages_per_doc: int = 1, model: str = "tiny", kind: str = "pdf-scan"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="colqwen-bench-ingest-") as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        suffix = KINDS[kind]
        paths = [make_document(inbox / f"doc-{i:05d}{suffix}", pages_per_doc, i, kind) for i in range(docs)]
        env = os.environ | {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(inbox)}
        env.pop("DAGSTER_HOME", None)
        env.pop("COLQWEN_REDIS_URL", None)
        if model == "null":
            env["COLQWEN_MODEL"] = str(_null_model(root, env))
        render_s, pages = _render_alone(env | {"COLQWEN_HOME": str(root / "render-alone")})
        embed_s = _embed_alone(pages, env)
        first = _cli_ingest(env)
        events = _dagster_events_of_last_run(root / "var" / "dagster")
        unchanged = _cli_ingest(env)
        for i in range(max(1, docs // 100)):
            make_document(paths[i], pages_per_doc, docs + i, kind)
        changed = _cli_ingest(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "model": model,
        "kind": kind,
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
        "first_engine_s": first["engine_s"],
        "first_outside_engine_s": round(first["seconds"] - first["engine_s"], 2),
        "dagster_events": events,
        "dagster_events_per_document": round(events / docs, 2),
        "runs": first["runs"],
        "model_loads": first["model_loads"],
        "unchanged_model_loads": unchanged["model_loads"],
        "changed_documents": max(1, docs // 100),
        "checks_in_error": first["checks_in_error"],
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
    output = run.stdout + run.stderr
    # A blocking check in ERROR exits 1 after a complete ingest (index written, nothing failed): the
    # timing stands, and the JSON says which checks errored (the tiny model's tied scores can).
    errored = re.findall(r"^error: check\(s\) (.+) ended in ERROR", run.stderr, re.MULTILINE)
    completed = re.search(r"^done: .*, 0 failed, ", run.stdout, re.MULTILINE) is not None
    if run.returncode != 0 and not (run.returncode == 1 and errored and completed):
        raise RuntimeError(f"ingest failed ({run.returncode}): {run.stderr.strip().splitlines()[-3:]}")
    engine = re.findall(r"\[\d+/\d+ documents, ([\d.]+) s\]", output)  # the engine's last progress line
    return {
        "seconds": seconds,
        "engine_s": float(engine[-1]) if engine else 0.0,
        "runs": len(re.findall(r"^run \d+/\d+:", output, re.MULTILINE)),
        "model_loads": output.count("model loaded:"),
        "checks_in_error": errored[0].split(", ") if errored else [],
    }


def _dagster_events_of_last_run(dagster_home: Path) -> int:
    # The bench drives the whole product (the CLI, then Dagster's record of it); Dagster itself
    # stays behind defs/ (test_layers).
    from colqwen_pipeline.defs.instance import events_of_last_run

    return events_of_last_run(dagster_home)
