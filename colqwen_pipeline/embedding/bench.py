"""Embedding benchmarks: throughput (``colqwen-pipeline bench embed``) and batch-size invariance.

``--model tiny`` is the offline test model (seconds on a CPU). ``--model full-random`` is the
published Qwen2.5-VL-3B geometry with random weights: per page it costs exactly what the real
ColQwen2.5 costs, so its pages/s is the real model's. It is built once in bf16 on the device and
saved under ``$COLQWEN_HOME/models/`` (~7.5 GB), then loaded through the production loader (so
4bit/8bit quantise it like real weights). On a CPU it is refused unless
``COLQWEN_BENCH_FULL_ON_CPU=1`` (then bf16/4bit/8bit only, never fp32: ~15 GB of RAM; expect
minutes per page).

``python -m colqwen_pipeline.embedding.bench invariance [--pages-from DIR]`` prints how much a
page's embedding moves between batch size 1 and 4, with and without mixing page sizes in a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.embedding.embedder import LocalEmbedder, group_batches, warm_up
from colqwen_pipeline.embedding.identity import ModelSpec
from colqwen_pipeline.embedding.loading import load_model
from colqwen_pipeline.settings import Settings

LETTER_150_DPI = (1275, 1650)
FULL_ON_CPU_ENV = "COLQWEN_BENCH_FULL_ON_CPU"


class BenchError(PipelineError):
    """A benchmark that cannot run here; the message says why and what to do."""


def synthetic_pages(directory: Path, count: int, size: tuple[int, int] = LETTER_150_DPI) -> list[Path]:
    """PNG pages with text-like strokes: the model's cost depends on the size only, decoding on the content."""
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for line in range(40):
            y = 80 + line * 38
            draw.text((90, y), f"page {number} line {line} " + "lorem ipsum " * int(rng.integers(3, 9)), fill="black")
        path = directory / f"page-{number:04d}.png"
        image.save(path, compress_level=1)
        paths.append(path)
    return paths


def model_directory(kind: str, settings: Settings, device: str, precision: str) -> Path:
    """COLQWEN_MODEL_FAMILY picks the family (default ColQwen2.5) of the tiny or full-random model."""
    from colqwen_pipeline.embedding.registry import ensure_tiny_model
    from colqwen_pipeline.embedding.tiny import FULL_RANDOM, build_random_model, is_tiny_model

    if kind == "tiny":
        return ensure_tiny_model(settings.tiny_model_dir, settings.model_family)
    if kind != "full-random":
        raise BenchError(f"--model {kind}: expected tiny or full-random")
    family = settings.model_family or "colqwen2.5"
    if family not in FULL_RANDOM:
        raise BenchError(f"--model full-random: no published geometry for {family} (one of {', '.join(FULL_RANDOM)})")
    if not device.startswith("cuda"):
        if os.environ.get(FULL_ON_CPU_ENV) != "1":
            raise BenchError(
                "--model full-random builds a published geometry (3.75 B parameters for ColQwen2.5, 4.4 B for "
                f"ColQwen3; 7.5-8.9 GB in bf16, ~8.6 TFLOP per page): run it on a CUDA machine, or set "
                f"{FULL_ON_CPU_ENV}=1 to insist (minutes per page)"
            )
        if precision in {"fp32", "auto"}:
            raise BenchError("--model full-random on a CPU needs --precision bf16, 4bit or 8bit (fp32 needs ~15 GB)")
    directory = settings.home_dir / "models" / f"full-random-{family}"
    if not is_tiny_model(directory):
        build_random_model(directory, FULL_RANDOM[family], dtype="bf16", device=device)
    return directory


def peak_memory_mb(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "cuda_max_allocated"
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "process_max_rss"


def bench_embed(model: str = "tiny", precision: str = "auto", batch_size: int = 4, pages: int = 16) -> dict[str, Any]:
    """Load, warm up, then time ``pages`` letter pages (PNG files, decoded in the prefetch thread)."""
    from colqwen_pipeline.embedding.identity import resolve_device

    if pages < 1 or batch_size < 1:
        raise BenchError(f"--pages {pages} / --batch-size {batch_size}: both must be at least 1")
    settings = Settings()
    device = resolve_device(settings.device)
    source = model_directory(model, settings, device, precision)
    spec = ModelSpec(str(source), device=device, precision=precision, max_visual_tokens=settings.max_visual_tokens)
    started = time.perf_counter()
    loaded, processor, identity = load_model(spec, settings.home_dir / "models" / "views")
    embedder = LocalEmbedder(loaded, processor, identity, batch_size)
    warm_up(embedder)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as scratch:
        paths = synthetic_pages(Path(scratch), pages)
        if device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        vectors = embedder.embed_images(paths)
        seconds = time.perf_counter() - started
        visual_tokens = embedder.visual_tokens(paths[0])
    peak, peak_kind = peak_memory_mb(device)
    return {
        "model": model,
        "device": device,
        "precision": identity.precision,
        "batch_size": batch_size,
        "visual_tokens": visual_tokens,
        "pages": pages,
        "pages_per_s": round(pages / seconds, 3),
        "peak_mem_mb": peak,
        "peak_mem_kind": peak_kind,
        "seconds": round(seconds, 3),
        "load_and_warm_up_s": round(load_s, 2),
        "batch_size_used": embedder.stats.batch_size_used,
        "oom_backoffs": embedder.stats.oom_backoffs,
        "tokens_per_page": int(np.mean([len(v) for v in vectors])),
        "attention": identity.attention,
        "fingerprint": identity.fingerprint,
    }


# --- batch-size invariance (colpali issue 274) -------------------------------------------------


def render_inbox_pages(inbox: Path, dpis: tuple[int, ...] = (150, 60)) -> list[Image.Image]:
    """Every page of the inbox PDFs at each DPI: two page sizes, so batches can mix token counts."""
    import pypdfium2 as pdfium

    images = []
    for pdf_path in sorted(inbox.glob("*.pdf")):
        pdf = pdfium.PdfDocument(pdf_path)
        for index in range(len(pdf)):
            for dpi in dpis:
                images.append(pdf[index].render(scale=dpi / 72).to_pil().convert("RGB"))
        pdf.close()
    return images


def _difference(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    """Largest absolute change of any coordinate and lowest cosine between a token and itself."""
    max_abs, min_cos = 0.0, 1.0
    for a, b in zip(reference, other, strict=True):
        a, b = a.astype(np.float32), b.astype(np.float32)
        if a.shape != b.shape:
            return {"max_abs": float("inf"), "min_cosine": -1.0}
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        min_cos = min(min_cos, float(cos.min()))
    return {"max_abs": round(max_abs, 6), "min_cosine": round(min_cos, 6)}


def _embed_fp32(embedder: LocalEmbedder, images: list[Image.Image], batches: list[list[int]]) -> list[np.ndarray]:
    """Float32 vectors (no fp16 rounding hiding small differences) for explicit batches."""
    return embedder._run(
        batches, lambda idx: embedder.processor.process_images([images[i] for i in idx]), None, np.float32
    )


def _batchings(embedder: LocalEmbedder, images: list[Image.Image], size: int) -> dict[str, list[list[int]]]:
    tokens = [embedder.visual_tokens(i) for i in images]
    return {
        "batch_1": [[i] for i in range(len(images))],
        # what this engine does: one token count per batch, so no padding
        "grouped_equal_sizes": group_batches(tokens, size),
        # what plain colpali usage does: batches in input order, sizes mixed, padding added
        "mixed_sizes_in_order": [list(range(i, min(i + size, len(images)))) for i in range(0, len(images), size)],
    }


def _mixed_queries(embedder: LocalEmbedder, queries: list[str]) -> list[np.ndarray]:
    embedder.mix_sizes = True
    try:
        return embedder.embed_queries(queries)
    finally:
        embedder.mix_sizes = False


def measure_batch_invariance(
    model_dir: Path, images: list[Image.Image], precisions: tuple[str, ...] = ("fp32", "bf16"), batch_size: int = 4
) -> dict[str, Any]:
    queries = ["revenue by quarter", "pump", "what does figure three show about the wiring of the valve", "total due"]
    report: dict[str, Any] = {"pages": len(images), "batch_size": batch_size}
    for precision in precisions:
        model, processor, identity = load_model(
            ModelSpec(str(model_dir), device="cpu", precision=precision), Path(tempfile.gettempdir())
        )
        embedder = LocalEmbedder(model, processor, identity, batch_size=1)
        runs = {name: _embed_fp32(embedder, images, b) for name, b in _batchings(embedder, images, batch_size).items()}
        queries_one = embedder.embed_queries(queries)
        embedder.batch_size = batch_size
        report[precision] = {
            "grouped_equal_sizes": _difference(runs["batch_1"], runs["grouped_equal_sizes"]),
            "mixed_sizes_in_order": _difference(runs["batch_1"], runs["mixed_sizes_in_order"]),
            "queries_grouped_by_length": _difference(queries_one, embedder.embed_queries(queries)),
            "queries_mixed_lengths": _difference(queries_one, _mixed_queries(embedder, queries)),
            "visual_tokens": sorted({embedder.visual_tokens(i) for i in images}),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colqwen_pipeline.embedding.bench")
    parser.add_argument("what", choices=["invariance", "embed"])
    parser.add_argument("--inbox", default="data/inbox", help="PDFs rendered for the invariance measurement")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pages", type=int, default=16)
    args = parser.parse_args(argv)
    if args.what == "embed":
        result = bench_embed(args.model, args.precision, args.batch_size, args.pages)
    else:
        from colqwen_pipeline.embedding.registry import ensure_tiny_model

        settings = Settings()
        model_dir = ensure_tiny_model(settings.tiny_model_dir, settings.model_family)
        result = measure_batch_invariance(model_dir, render_inbox_pages(Path(args.inbox)), batch_size=args.batch_size)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
