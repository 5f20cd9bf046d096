"""``colqwen-pipeline``: ingest, search, rasterize, build-tiny-model (and more as they land).

Heavy imports (torch, colpali-engine, dagster) happen inside the commands that need them, so
``--help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from colqwen_pipeline.errors import PipelineError
from colqwen_pipeline.settings import Settings


def cmd_ingest(args: argparse.Namespace) -> int:
    from colqwen_pipeline.runner import IngestInterrupted, ingest

    settings = Settings()
    print(f"indexing {settings.inbox} into {settings.resolved_milvus_uri} (state: {settings.home_dir})")
    last_signal = stop_on_signals()
    try:
        summary = ingest(
            settings,
            args.paths,
            confirm_removals=args.confirm_removals,
            force=args.force,
            stop_requested=lambda: last_signal() is not None,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (IngestInterrupted, KeyboardInterrupt) as error:
        signo = last_signal() or signal.SIGINT
        detail = str(error) or "interrupted outside a run; what was written before stays consistent"
        print(f"stopped by {signal.Signals(signo).name}: {detail}", file=sys.stderr)
        return 128 + signo
    print(
        f"done: {summary.documents} documents, {summary.pages} pages, {summary.tokens} token vectors in Milvus, "
        f"{summary.removed} removed, {len(summary.failed)} failed, {summary.seconds} s"
    )
    for key, reason in summary.failed.items():
        print(f"failed: {key}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def stop_on_signals() -> Callable[[], int | None]:
    """SIGTERM (docker stop, systemd, timeout) stops an ingest like Ctrl-C: the first signal
    interrupts the run in progress (inside a step Dagster handles both as an interrupt of the step,
    which marks the run failed; every write is atomic per document). Returns a function that says
    which signal came, or None (read from a wakeup pipe: Dagster's handler does not record it, and
    a signal inside a Milvus or gRPC call can surface as some other error)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def on_signal(_signo: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    received: list[int] = []

    def last_signal() -> int | None:
        with contextlib.suppress(BlockingIOError):
            received.extend(os.read(read_end, 64))
        return received[0] if received else None

    return last_signal


def cmd_search(args: argparse.Namespace) -> int:
    from colqwen_pipeline.stages import search

    hits = search(args.query, top_k=args.top_k, doc_ids=args.doc or None)
    results = [hit.as_dict() for hit in hits]
    if args.json:
        print(json.dumps({"query": args.query, "results": results}, indent=1))
    else:
        print(f"top {len(results)} pages for {args.query!r}:")
        for rank, r in enumerate(results, 1):
            print(f"{rank:>3}. {r['score']:8.3f}  {r['document']} page {r['page']}  ({r['image_path']})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The eval set scored on the live collection: metric table and top pages per query."""
    from colqwen_pipeline.evaluation.collection import evaluate
    from colqwen_pipeline.evaluation.evalset import EvalSetError
    from colqwen_pipeline.evaluation.report import report_json, report_text

    settings = Settings()
    if args.eval_set:
        settings = settings.model_copy(update={"eval_set": Path(args.eval_set)})
    try:
        report = evaluate(settings)
    except EvalSetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report_json(report, args.top_k), indent=1) if args.json else report_text(report, args.top_k))
    return 0


def cmd_rasterize(args: argparse.Namespace) -> int:
    from colqwen_pipeline.documents import rasterize_document
    from colqwen_pipeline.documents.manifest import DocumentError

    try:
        manifest = rasterize_document(Path(args.file), Path(args.out), Settings(), dpi=args.dpi)
    except DocumentError as error:
        print(str(error), file=sys.stderr)
        return 2
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(manifest), indent=1))
    else:
        print(f"{len(manifest.pages)} pages written to {args.out}")
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    path = build_tiny_model(Path(args.directory))
    print(f"tiny random-weight ColQwen2.5 written to {path} (for tests and demos: scores are meaningless)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from colqwen_pipeline.service.app import serve

    settings = Settings()
    serve(settings, args.host or settings.server_host, args.port or settings.server_port)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks print one JSON object (``--json``) or a readable summary; each lives beside its stage."""
    if args.stage == "rasterize":
        from colqwen_pipeline.documents.bench import bench_rasterize

        result = bench_rasterize(pages=args.pages or 100)
    elif args.stage == "embed":
        from colqwen_pipeline.embedding.bench import bench_embed

        result = bench_embed(
            model=args.model, precision=args.precision, batch_size=args.batch_size, pages=args.pages or 16
        )
    elif args.stage == "ingest":
        from colqwen_pipeline.bulk.bench import bench_ingest

        result = bench_ingest(docs=args.docs, pages_per_doc=args.pages_per_doc)
    else:
        from colqwen_pipeline.index.bench import bench_search

        result = bench_search(
            pages=args.pages or 1000, queries=args.queries, layra_queries=args.layra_queries, uri=args.uri
        )
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colqwen-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="index inbox documents (all by default) headless")
    ingest.add_argument("paths", nargs="*", help="files or folders inside the inbox")
    ingest.add_argument("--force", action="store_true", help="redo every stage, even where nothing changed")
    ingest.add_argument(
        "--confirm-removals",
        action="store_true",
        help="remove vanished documents even when most of the inbox is gone at once (refused otherwise)",
    )
    ingest.set_defaults(func=cmd_ingest)

    search = commands.add_parser("search", help="rank indexed pages for a query by MaxSim")
    search.add_argument("query")
    search.add_argument("--top-k", type=positive_int, default=5, help="pages to return (default 5)")
    search.add_argument("--doc", action="append", help="restrict to a document id (repeatable)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_search)

    evaluate = commands.add_parser("evaluate", help="score the eval set on the live collection (nDCG@5, recall@k, MRR)")
    evaluate.add_argument("--eval-set", help="JSONL file or BEIR directory (default: COLQWEN_EVAL_SET)")
    evaluate.add_argument("--top-k", type=positive_int, default=5, help="pages shown per query")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    rasterize = commands.add_parser("rasterize", help="render a document's pages to PNG")
    rasterize.add_argument("file")
    rasterize.add_argument("--out", required=True)
    rasterize.add_argument("--dpi", type=int)
    rasterize.add_argument("--json", action="store_true")
    rasterize.set_defaults(func=cmd_rasterize)

    bench = commands.add_parser("bench", help="measure a stage against its baseline (JSON)")
    bench.add_argument("stage", choices=["rasterize", "embed", "search", "ingest"])
    bench.add_argument("--pages", type=int, help="pages to generate (defaults: 100 / 16 / 1000)")
    bench.add_argument("--model", choices=["tiny", "full-random"], default="tiny", help="embed only")
    bench.add_argument("--precision", choices=["auto", "bf16", "fp32", "4bit", "8bit"], default="auto")
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--queries", type=int, default=50, help="search only: queries timed")
    bench.add_argument(
        "--layra-queries", type=int, help="search only: LAYRA-style baseline queries (default 5; 0 above 2,000 pages)"
    )
    bench.add_argument("--uri", help="search only: a Milvus server (http://host:19530) instead of a Lite file")
    bench.add_argument("--docs", type=int, default=200, help="ingest only: generated documents")
    bench.add_argument("--pages-per-doc", type=int, default=1, help="ingest only: pages per document")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=cmd_bench)

    tiny = commands.add_parser("build-tiny-model", help="write the tiny random-weight test model")
    tiny.add_argument("directory")
    tiny.set_defaults(func=cmd_build_tiny_model)

    serve = commands.add_parser("serve", help="HTTP model server: embed, search, health (OpenAPI at /docs)")
    serve.add_argument("--host", help="bind address (default COLQWEN_SERVER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default COLQWEN_SERVER_PORT or 8005)")
    serve.set_defaults(func=cmd_serve)
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for our progress lines: libraries log a lot at INFO and draw progress bars."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    # An interrupt that lands while Dagster closes a SQLite connection makes SQLAlchemy log a
    # traceback about the close; the command reports the interrupt itself, in one line.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("colqwen_pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except PipelineError as error:  # a user-facing cause: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
