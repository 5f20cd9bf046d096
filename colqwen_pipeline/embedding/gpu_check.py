"""The one-call GPU check (``scripts/device_check.sh``): every GPU figure the project lacks, in one run.

The orchestrator (``main``) imports no torch. Each step runs in its own subprocess
(``python -m colqwen_pipeline.embedding.gpu_check step NAME CONFIG``) under a time limit cut from
one overall budget, so a crash, a hang or an out-of-memory costs that step only. Steps append one
JSON record per measurement to ``records.jsonl``; after every step the orchestrator rewrites
``device_check.json`` and ``device_check.md`` from them, so a run cut short keeps what it measured.

Steps, most wanted first: env, build (the full-random Qwen2.5-VL-3B geometry in bf16 on the
device, or the tiny model), bf16 (batch sizes, then batch-size invariance), colqwen3 (the other
family beside it: the full-random ColQwen3-4B geometry built, loaded and measured in bf16 at the
same batch sizes), 4bit, 8bit, sdpa (only when flash-attention-2 is importable: the bf16 rows then
ran with it), e2e (the bulk engine on generated PDFs up to the embeddings stage: no Milvus on the
device).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RECORDS = "records.jsonl"
STEP_LIMITS_S = {"env": 60, "build": 240, "bf16": 240, "4bit": 150, "8bit": 150, "sdpa": 120, "e2e": 150}
STEP_LIMITS_S["colqwen3"] = 240  # build (8.9 GB written), load and bf16 rows of ColQwen3-4B
FAMILY_STEPS = ("colqwen3",)  # steps that measure another family than the default ColQwen2.5, named after it
DEFAULT_FAMILY = "colqwen2.5"
MIXED_SIZES = ((1275, 1650), (510, 660))  # letter at 150 and 60 DPI: 744 and 432 visual tokens
OPTIONAL_MODULES = ("colpali_engine", "bitsandbytes", "flash_attn", "pydantic_settings", "pypdfium2", "peft")


# --- records ------------------------------------------------------------------------------------


def write_record(out: Path, record: dict[str, Any]) -> None:
    """Append at once (and flush): the process may be killed by its time limit a moment later."""
    with (out / RECORDS).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_records(out: Path) -> list[dict[str, Any]]:
    path = out / RECORDS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut off by a kill
            records.append(json.loads(line))
    return records


def guarded(out: Path, step: str, what: str, measure: Callable[[], dict[str, Any]]) -> bool:
    """Run one measurement; a failure becomes an error record and the step goes on."""
    try:
        write_record(out, {"step": step} | measure())
        return True
    except Exception as error:  # noqa: BLE001 - one failed measurement must not lose the others
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        write_record(out, {"step": step, "kind": "error", "what": what, "error": f"{type(error).__name__}: {first}"})
        return False


# --- measurements (run inside a step process) ---------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    found = {}
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "present")
        except Exception as error:  # noqa: BLE001 - ImportError, or a native library that fails to load
            found[name] = f"missing ({type(error).__name__}: {str(error)[:200]})"
    record: dict[str, Any] = {"kind": "env", "python": sys.version.split()[0], "torch": torch.__version__}
    record |= {"transformers": transformers.__version__, "cuda": torch.version.cuda, "modules": found}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        record |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        record["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        record["gpu"] = f"none ({device})"
    return record


def model_dir(config: dict[str, Any], family: str = DEFAULT_FAMILY) -> Path:
    name = config["model"] if family == DEFAULT_FAMILY else f"{config['model']}-{family}"
    return Path(config["work"]) / "models" / name


def build(config: dict[str, Any], family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """The family's published geometry with random weights (full-random) or its tiny model."""
    from colqwen_pipeline.embedding.tiny import FULL_RANDOM, TINY, build_random_model, is_tiny_model

    directory, started = model_dir(config, family), time.perf_counter()
    if config["model"] == "full-random" and not config["device"].startswith("cuda"):
        raise RuntimeError("full-random is 3.75-4.4 B parameters: build it on a CUDA device (--model tiny on a CPU)")
    if not is_tiny_model(directory):
        geometry = (FULL_RANDOM if config["model"] == "full-random" else TINY)[family]
        dtype = "bf16" if config["device"].startswith("cuda") else "fp32"
        build_random_model(directory, geometry, dtype=dtype, device=config["device"])
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    record = {"kind": "build", "model": config["model"], "family": family}
    return record | {"seconds": round(time.perf_counter() - started, 1), "size_gb": round(size / 1e9, 2)}


def page_files(config: dict[str, Any]) -> list[Path]:
    """Synthetic letter pages (PNG, decoded by the embedder's pre-processing thread as in the pipeline)."""
    from colqwen_pipeline.embedding.bench import synthetic_pages

    directory = Path(config["work"]) / "pages"
    paths = sorted(directory.glob("page-*.png"))
    if len(paths) < config["pages"]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = synthetic_pages(directory, config["pages"])
    return paths[: config["pages"]]


@contextlib.contextmanager
def forced_attention(name: str | None) -> Iterator[None]:
    """The loader picks flash-attention-2 whenever it can; the sdpa comparison row needs it off."""
    from colqwen_pipeline.embedding import identity

    original = identity.attention_implementation  # identify() records it, load_model() uses the record
    if name:
        identity.attention_implementation = lambda device, precision: name
    try:
        yield
    finally:
        identity.attention_implementation = original


def load(
    config: dict[str, Any], precision: str, attention: str | None = None, family: str = DEFAULT_FAMILY
) -> tuple[Any, float]:
    from colqwen_pipeline.embedding.embedder import LocalEmbedder
    from colqwen_pipeline.embedding.identity import ModelSpec
    from colqwen_pipeline.embedding.loading import load_model

    started = time.perf_counter()
    spec = ModelSpec(str(model_dir(config, family)), device=config["device"], precision=precision)
    with forced_attention(attention):
        model, processor, identity = load_model(spec, Path(config["work"]) / "views")
    return LocalEmbedder(model, processor, identity), round(time.perf_counter() - started, 1)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def embed_row(embedder: Any, paths: list[Path], batch_size: int, load_s: float) -> dict[str, Any]:
    """pages/s over ``paths`` at one batch size, after a warm batch of that size (kernel choice, allocator)."""
    from colqwen_pipeline.embedding.bench import peak_memory_mb
    from colqwen_pipeline.embedding.embedder import EmbedStats

    device = embedder.identity.device
    embedder.batch_size = batch_size
    embedder.embed_images(paths[:batch_size])
    embedder.stats = EmbedStats()
    reset_peak(device)
    started = time.perf_counter()
    vectors = embedder.embed_images(paths)
    seconds = time.perf_counter() - started
    peak, peak_kind = peak_memory_mb(device)
    return {
        "kind": "embed",
        "family": embedder.identity.family,
        "precision": embedder.identity.precision,
        "attention": embedder.identity.attention,
        "batch_size": batch_size,
        "batch_size_used": embedder.stats.batch_size_used,
        "oom_backoffs": embedder.stats.oom_backoffs,
        "pages": len(paths),
        "visual_tokens": embedder.visual_tokens(paths[0]),
        "tokens_per_page": int(sum(len(v) for v in vectors) / len(vectors)),
        "pages_per_s": round(len(paths) / seconds, 2),
        "seconds": round(seconds, 2),
        "peak_mem_mb": peak,
        "peak_mem_kind": peak_kind,
        "load_s": load_s,
    }


def invariance(embedder: Any, config: dict[str, Any]) -> dict[str, Any]:
    """How far a page's vectors move between batch 1 and batch N (fp32 outputs of the bf16 model).

    Pages alternate between two sizes, so batches in input order mix token counts (padding, as in
    plain colpali use) while the engine's grouping keeps one count per batch."""
    from PIL import Image

    from colqwen_pipeline.embedding.bench import _batchings, _difference, _embed_fp32, synthetic_pages

    directory = Path(config["work"]) / "mixed"
    directory.mkdir(parents=True, exist_ok=True)
    count, size = config["invariance_pages"], config["invariance_batch"]
    per_size = []
    for width, height in MIXED_SIZES:
        folder = directory / f"{width}x{height}"
        folder.mkdir(exist_ok=True)
        per_size.append(synthetic_pages(folder, count // 2, (width, height)))
    images = [Image.open(p).convert("RGB") for pair in zip(*per_size, strict=True) for p in pair]
    runs = {name: _embed_fp32(embedder, images, b) for name, b in _batchings(embedder, images, size).items()}
    return {
        "kind": "invariance",
        "precision": embedder.identity.precision,
        "attention": embedder.identity.attention,
        "batch_size": size,
        "pages": len(images),
        "visual_tokens": sorted({embedder.visual_tokens(i) for i in images}),
        "grouped_equal_sizes": _difference(runs["batch_1"], runs["grouped_equal_sizes"]),
        "mixed_sizes_in_order": _difference(runs["batch_1"], runs["mixed_sizes_in_order"]),
    }


def end_to_end(config: dict[str, Any]) -> dict[str, Any]:
    """The bulk engine on generated PDFs (render workers, waves, cache off) up to the embeddings stage."""
    from colqwen_pipeline.bulk.bench import make_document

    root = Path(config["work"]) / "e2e"
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for number in range(config["e2e_docs"]):
        make_document(inbox / f"doc-{number:04d}.pdf", config["e2e_pages_per_doc"], number)
    environ = {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(inbox), "COLQWEN_MODEL": str(model_dir(config))}
    environ |= {"COLQWEN_DEVICE": config["device"], "COLQWEN_PRECISION": "bf16", "COLQWEN_REDIS_URL": ""}
    environ["COLQWEN_BATCH_SIZE"] = str(config["e2e_batch"])
    os.environ.update(environ)
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.inbox import inbox_files
    from colqwen_pipeline.settings import Settings

    settings = Settings(_env_file=None)
    report = run_documents(settings, list(inbox_files(inbox)), until="embeddings", say=lambda line: None)
    return {
        "kind": "e2e",
        "precision": "bf16",
        "batch_size": config["e2e_batch"],
        "documents": len(report.documents),
        "failed": len(report.failed),
        "pages": report.pages,
        "seconds": round(report.seconds, 2),
        "model_load_s": report.model_load_s,
        "pages_per_s": report.end_to_end_pages_per_s,  # the model load included
        "pages_per_s_after_load": round(report.pages / max(report.seconds - report.model_load_s, 1e-9), 2),
        "forward": report.forward,
        "first_error": next(iter(report.failed.values()), ""),
    }


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a broken native library counts as absent
        return False


def run_step(name: str, config: dict[str, Any]) -> bool:
    """True when every measurement of the step succeeded (a skip counts as success: it says why)."""
    out, device = Path(config["out"]), config["device"]
    if name == "env":
        return guarded(out, name, "environment", lambda: environment(device))
    if name == "build":
        return guarded(out, name, f"build {config['model']}", lambda: build(config))
    if name == "e2e":
        return guarded(out, name, "end-to-end bulk run", lambda: end_to_end(config))
    if name in FAMILY_STEPS:
        return measure_family(name, config)
    if name in {"4bit", "8bit"} and not importable("bitsandbytes"):
        why = "bitsandbytes is not importable (wheel not carried?)"
        write_record(out, {"step": name, "kind": "skipped", "why": why})
        return True
    if name == "sdpa" and not (device.startswith("cuda") and importable("flash_attn")):
        why = "flash_attn is not importable: the bf16 rows ran with sdpa; no flash-attention-2 row"
        write_record(out, {"step": name, "kind": "skipped", "why": why})
        return True
    return measure_precision(name, config)


def measure_precision(name: str, config: dict[str, Any]) -> bool:
    """One model load, then its rows (bf16: every batch size, then invariance)."""
    out, precision = Path(config["out"]), "bf16" if name == "sdpa" else name
    loaded: list[Any] = []

    def load_once() -> dict[str, Any]:
        loaded.extend(load(config, precision, attention="sdpa" if name == "sdpa" else None))
        return {"kind": "load", "precision": precision, "seconds": loaded[1]}

    if not guarded(out, name, f"{name} load", load_once):
        return False
    embedder, load_s = loaded
    paths = page_files(config)
    if name != "bf16":  # int8 matmuls are slow: fewer pages keep the step inside its limit
        paths = paths[: config["quant_pages"]]
    sizes = config["batch_sizes"] if name == "bf16" else [config["quant_batch"]]
    rows = {n: functools.partial(embed_row, embedder, paths, n, load_s) for n in sizes}
    ok = [guarded(out, name, f"{name} batch {n}", row) for n, row in rows.items()]
    if name == "bf16":
        ok.append(guarded(out, name, "bf16 invariance", lambda: invariance(embedder, config)))
    return all(ok)


def measure_family(family: str, config: dict[str, Any]) -> bool:
    """Another family beside ColQwen2.5, in one step: its build, a bf16 load, the bf16 rows."""
    out = Path(config["out"])
    if not guarded(out, family, f"build {family}", lambda: build(config, family)):
        return False
    loaded: list[Any] = []

    def load_once() -> dict[str, Any]:
        loaded.extend(load(config, "bf16", family=family))
        return {"kind": "load", "family": family, "precision": "bf16", "seconds": loaded[1]}

    if not guarded(out, family, f"{family} load", load_once):
        return False
    embedder, load_s = loaded
    paths = page_files(config)
    rows = {n: functools.partial(embed_row, embedder, paths, n, load_s) for n in config["batch_sizes"]}
    return all([guarded(out, family, f"{family} batch {n}", row) for n, row in rows.items()])


# --- the orchestrator ---------------------------------------------------------------------------


def run_subprocess(name: str, config: dict[str, Any], limit_s: float, log: Path) -> dict[str, Any]:
    """The step in its own process group, killed whole at its limit; returns how it ended."""
    command = [sys.executable, "-m", "colqwen_pipeline.embedding.gpu_check", "step", name, json.dumps(config)]
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n=== step {name} (limit {limit_s:.1f} s)\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = f"killed at its {limit_s:.1f} s limit"
    return {"status": status, "seconds": round(time.perf_counter() - started, 1)}


def plan(config: dict[str, Any]) -> list[str]:
    steps = ["env", "build", "bf16", *FAMILY_STEPS, "4bit", "8bit", "e2e", "sdpa"]
    return [s for s in steps if s not in config["skip"]]


def run_all(config: dict[str, Any]) -> dict[str, Any]:
    out = Path(config["out"])
    deadline = time.perf_counter() + config["budget_s"]
    steps: dict[str, Any] = {}
    for name in plan(config):
        left = deadline - time.perf_counter()
        if left < 15:
            steps[name] = {"status": "not run: out of time", "seconds": 0}
        elif name != "env" and steps.get("build", {}).get("status", "ok") != "ok":
            steps[name] = {"status": "not run: no model (the build step failed)", "seconds": 0}
        else:
            steps[name] = run_subprocess(name, config, min(STEP_LIMITS_S[name], left), out / "device_check.log")
        write_reports(out, config, steps)
    return steps


def summary(config: dict[str, Any], steps: dict[str, Any]) -> dict[str, Any]:
    records = read_records(Path(config["out"]))
    env = next((r for r in records if r.get("kind") == "env"), {})
    return {
        "config": {k: v for k, v in config.items() if k not in {"out", "work"}},
        "environment": env,
        "steps": steps,
        "rows": [r for r in records if r.get("kind") in {"embed", "e2e"}],
        "invariance": [r for r in records if r.get("kind") == "invariance"],
        "build": [r for r in records if r.get("kind") == "build"],
        "loads": [r for r in records if r.get("kind") == "load"],
        "skipped": [r for r in records if r.get("kind") == "skipped"],
        "errors": [r for r in records if r.get("kind") == "error"],
    }


def _table_row(r: dict[str, Any]) -> str:
    if r["kind"] == "embed":
        family = r.get("family", DEFAULT_FAMILY)
        what = "bench embed" if family == DEFAULT_FAMILY else f"bench embed {family}"
        rate, load_s = r["pages_per_s"], r["load_s"]
    else:  # the bulk run's rate without its model load is the one to compare with bench embed
        what = f"bulk e2e ({r['documents']} docs, {r['failed']} failed)"
        rate, load_s = f"{r['pages_per_s_after_load']} (with load {r['pages_per_s']})", r["model_load_s"]
    return (
        f"| {what} | {r['precision']} | {r.get('attention', '')} | {r['batch_size']} | {r['pages']} | "
        f"{r.get('visual_tokens', '')} | {rate} | {r.get('peak_mem_mb', '')} | {load_s} |"
    )


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"GPU check: {report['config']['model']} on {env.get('gpu', '?')} "
        f"(torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, CUDA {env.get('cuda')})",
        "",
        "| row | precision | attention | batch | pages | visual tokens | pages/s | peak mem (MB) | load s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_table_row(r) for r in report["rows"]]
    for r in report["invariance"]:
        grouped, mixed = r["grouped_equal_sizes"], r["mixed_sizes_in_order"]
        lines.append(
            f"\nInvariance, {r['precision']}, batch 1 vs {r['batch_size']}, {r['pages']} pages of "
            f"{r['visual_tokens']} visual tokens: one size per batch max |Δ| {grouped['max_abs']}, min cos "
            f"{grouped['min_cosine']}; mixed sizes max |Δ| {mixed['max_abs']}, min cos {mixed['min_cosine']}"
        )
    lines.append("")
    for r in report["build"]:
        lines.append(f"- build: {r['model']} {r.get('family', DEFAULT_FAMILY)} in {r['seconds']} s, {r['size_gb']} GB")
    lines += [f"- skipped {r['step']}: {r['why']}" for r in report["skipped"]]
    lines += [f"- error in {r['what']}: {r['error']}" for r in report["errors"]]
    lines += [f"- step {name}: {s['status']} ({s['seconds']} s)" for name, s in report["steps"].items()]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, config: dict[str, Any], steps: dict[str, Any]) -> str:
    report = summary(config, steps)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (out / "device_check.md").write_text(table)
    return table


def parse(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="scripts/device_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "device-check-out", help="default $OUT")
    parser.add_argument("--model", choices=["full-random", "tiny"], default="full-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", default="", help="scratch: model, pages (default: a folder under /tmp)")
    parser.add_argument("--pages", type=int, default=64, help="pages per throughput row")
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="bf16 rows")
    parser.add_argument("--quant-batch", type=int, default=4, help="4bit / 8bit / sdpa rows")
    parser.add_argument("--quant-pages", type=int, default=32, help="pages per 4bit / 8bit / sdpa row")
    parser.add_argument("--invariance-batch", type=int, default=8)
    parser.add_argument("--invariance-pages", type=int, default=16)
    parser.add_argument("--e2e-docs", type=int, default=32)
    parser.add_argument("--e2e-pages-per-doc", type=int, default=4)
    parser.add_argument("--e2e-batch", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=450, help="all steps together")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    args = vars(parser.parse_args(argv))
    args["batch_sizes"] = [int(b) for b in args["batch_sizes"].split(",")]
    args["skip"] = [s for s in args["skip"].split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["step"]:
        return 0 if run_step(argv[1], json.loads(argv[2])) else 1
    config = parse(argv)
    out = Path(config["out"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORDS).unlink(missing_ok=True)
    config["out"] = str(out)
    config["work"] = str(Path(config["work"] or f"/tmp/colqwen-device-check-{config['model']}").resolve())
    steps = run_all(config)
    print(write_reports(out, config, steps), end="")
    return 0 if all(s["status"] == "ok" for s in steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
