"""``colqwen-pipeline``: the command line of the pipeline (ingest, search, evaluate, serve, ...).

Every command reads its settings once and turns a bad one into a single ``error:`` line; ``ingest``
checks its configuration (inbox, model directory, Milvus) before it renders anything. Heavy
imports (torch, colpali-engine, dagster) happen inside the commands that need them, so ``--help``
and light commands start fast.
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

from pydantic import ValidationError

from colqwen_pipeline.cli.preflight import load_settings, preflight_ingest, settings_error_line
from colqwen_pipeline.common.errors import PipelineError

DESCRIPTION = """\
Turn the documents of an inbox folder (PDF, DOCX/PPTX/XLSX, PNG/JPEG/TIFF) into a ColQwen
page index in Milvus, and search it. Start with `ingest`, then `search "your question"`.

Settings come from COLQWEN_* environment variables or a .env file in the working directory.
Relative paths are relative to the working directory: the state directory (COLQWEN_HOME,
default ./var) and the inbox (COLQWEN_INBOX, default ./data/inbox)."""


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def cmd_ingest(args: argparse.Namespace) -> int:
    from colqwen_pipeline.defs.runner import IngestInterrupted, ingest

    settings = load_settings()
    preflight_ingest(settings)  # a configuration error stops here, before any document is rendered
    print(f"indexing {settings.inbox.resolve()} into {settings.resolved_milvus_uri} (state: {settings.home_dir})")
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
        f"done: {plural(summary.documents, 'document')}, {plural(summary.pages, 'page')}, "
        f"{plural(summary.tokens, 'token vector')} in Milvus, "
        f"{summary.removed} removed, {len(summary.failed)} failed, {summary.seconds} s"
    )
    for reason in summary.failed.values():  # each names its file: "failed: notes.pdf: plain text, not a ..."
        print(f"failed: {reason}", file=sys.stderr)
    errored = [name for name, line in summary.checks.items() if line.startswith("ERROR")]
    if errored:  # the index is written but not what it must be: a script or CI must see it
        print(f"error: check(s) {', '.join(errored)} ended in ERROR (see the check lines above)", file=sys.stderr)
    return 1 if summary.failed or errored else 0


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
    from colqwen_pipeline.api import Index  # the Python API's search: one engine for both
    from colqwen_pipeline.cli.model_server import with_model_server
    from colqwen_pipeline.index import make_index

    settings = load_settings()
    settings = with_model_server(settings, make_index(settings), lambda line: print(line, file=sys.stderr))
    index = Index.from_settings(settings)
    hits = index.search(args.query, top_k=args.top_k, docs=args.doc)
    marker = index.model()
    results = [hit.as_dict() for hit in hits]
    if args.json:
        print(json.dumps({"query": args.query, "model": marker, "results": results}, indent=1))
        return 0
    print(f"top {plural(len(results), 'page')} for {args.query!r}:")
    for rank, r in enumerate(results, 1):
        print(f"{rank:>3}. {r['score']:8.3f}  {r['document']} page {r['page']}  ({r['image_path']})")
    print(model_line(marker))
    return 0


def model_line(marker: dict) -> str:
    warning = " (RANDOM TEST WEIGHTS: the scores mean nothing)" if marker["random_weights"] else ""
    return f"model: {marker['fingerprint']}{warning}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The eval set scored on the live collection: metric table and top pages per query."""
    from colqwen_pipeline.cli.search_scope import require_documents
    from colqwen_pipeline.evaluation.collection import evaluate
    from colqwen_pipeline.evaluation.evalset import EvalSetError, load_eval_set
    from colqwen_pipeline.evaluation.report import report_json, report_text
    from colqwen_pipeline.index import make_index

    settings = load_settings()
    if args.eval_set:
        settings = settings.model_copy(update={"eval_set": Path(args.eval_set)})
    try:
        load_eval_set(settings.eval_set, settings.eval_split)  # a bad eval set (exit 2) before an empty index (1)
        require_documents(settings, make_index(settings))  # an empty index would score a table of zeros
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
        manifest = rasterize_document(Path(args.file), Path(args.out), load_settings(), dpi=args.dpi)
    except DocumentError as error:
        print(str(error), file=sys.stderr)
        return 2
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(manifest), indent=1))
    else:
        rendered = manifest.summary() if manifest.skipped else plural(len(manifest.pages), "page")
        print(f"{rendered} written to {args.out}")  # partial: "2 of 3 pages rendered; skipped: 2 (why)"
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    path = build_tiny_model(Path(args.directory), family=args.family)
    print(f"tiny random-weight {args.family} model written to {path} (for tests and demos: scores are meaningless)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from colqwen_pipeline.service.app import serve
    from colqwen_pipeline.service.auth import ApiKeys, require_keys_off_loopback

    settings = load_settings()
    host = args.host or settings.server_host
    require_keys_off_loopback(host, ApiKeys.from_settings(settings), args.insecure)  # one line, exit 2
    serve(settings, host, args.port or settings.server_port)
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
    elif args.stage == "orchestration":
        from colqwen_pipeline.defs.bench import bench_orchestration

        result = bench_orchestration(documents=args.docs, materialized=args.materialized)
    elif args.stage == "ingest":
        from colqwen_pipeline.bulk.bench import bench_ingest

        result = bench_ingest(docs=args.docs, pages_per_doc=args.pages_per_doc, model=args.model, kind=args.kind)
    else:
        from colqwen_pipeline.index.bench import bench_search

        result = bench_search(
            pages=args.pages or 1000,
            queries=args.queries,
            layra_queries=args.layra_queries,
            uri=args.uri,
            peers=args.peers,
            token_pooling=args.token_pooling,
            server_pid=args.server_pid,
            workdir=args.workdir,
        )
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def peer_names(text: str) -> list[str]:
    from colqwen_pipeline.index.peers import parse_peers

    try:
        return parse_peers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default where there is one (not for flags or settings-backed options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or not action.help:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from colqwen_pipeline.embedding.families import FAMILIES  # a table: no torch

    parser = argparse.ArgumentParser(prog="colqwen-pipeline", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug lines from the pipeline")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    ingest = command("ingest", "index the inbox documents (all by default), headless, in this process")
    ingest.add_argument("paths", nargs="*", help="files or folders inside the inbox (default: the whole inbox)")
    ingest.add_argument("--force", action="store_true", help="redo every stage, even where nothing changed")
    ingest.add_argument(
        "--confirm-removals",
        action="store_true",
        help="remove vanished documents even when most of the inbox is gone at once (refused otherwise)",
    )
    ingest.set_defaults(func=cmd_ingest)

    search = command("search", "rank indexed pages for a query by MaxSim")
    search.add_argument("query", help="the words to search for")
    search.add_argument("--top-k", type=positive_int, default=5, help="pages to return")
    search.add_argument(
        "--doc",
        action="append",
        metavar="NAME",
        help="only this document: its file name, path in the inbox or document key (repeatable)",
    )
    search.add_argument("--json", action="store_true", help="print JSON (with the model's fingerprint)")
    search.set_defaults(func=cmd_search)

    evaluate = command("evaluate", "score the eval set on the live collection (nDCG@5, recall@k, MRR)")
    evaluate.add_argument("--eval-set", help="JSONL file or BEIR directory (default: COLQWEN_EVAL_SET)")
    evaluate.add_argument("--top-k", type=positive_int, default=5, help="pages shown per query")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    rasterize = command("rasterize", "render a document's pages to PNG (no index, no model)")
    rasterize.add_argument("file", help="PDF, office document or image")
    rasterize.add_argument("--out", required=True, help="folder for the page PNGs and manifest.json")
    rasterize.add_argument("--dpi", type=positive_int, help="render resolution (default: COLQWEN_DPI, 200)")
    rasterize.add_argument("--json", action="store_true", help="print the manifest as JSON")
    rasterize.set_defaults(func=cmd_rasterize)

    bench = command("bench", "measure a stage against its baseline (JSON)")
    bench.add_argument(
        "stage", choices=["rasterize", "embed", "search", "ingest", "orchestration"], help="the stage to measure"
    )
    bench.add_argument("--pages", type=positive_int, help="pages to generate (default: 100 / 16 / 1000)")
    bench.add_argument(
        "--model",
        choices=["tiny", "full-random", "null"],
        default="tiny",
        help="embed: tiny or full-random; ingest: tiny or null (no forward pass: the CPU side alone)",
    )
    bench.add_argument(
        "--precision", choices=["auto", "bf16", "fp32", "4bit", "8bit"], default="auto", help="embed only"
    )
    bench.add_argument("--batch-size", type=positive_int, default=4, help="embed only: pages per model call")
    bench.add_argument("--queries", type=positive_int, default=50, help="search only: queries timed")
    bench.add_argument(
        "--layra-queries", type=int, help="search only: LAYRA-style baseline queries (default 5; 0 above 2,000 pages)"
    )
    bench.add_argument("--uri", help="search only: a Milvus server (http://host:19530) instead of a Lite file")
    bench.add_argument(
        "--peers", type=peer_names, default=[], help="search only: embedded peers, e.g. lancedb,qdrant-local (.[bench])"
    )
    bench.add_argument("--token-pooling", type=int, default=0, help="search only: store pages pooled by this factor")
    bench.add_argument("--server-pid", type=int, help="search only: the Milvus server's process, for its RssAnon")
    bench.add_argument(
        "--workdir", help="search only: keep the built index here; a later run with the same settings reuses it"
    )
    bench.add_argument("--docs", type=positive_int, default=200, help="ingest, orchestration: generated documents")
    bench.add_argument(
        "--materialized",
        type=int,
        default=10_000,
        help="orchestration only: partitions materialised for the asset page",
    )
    bench.add_argument("--pages-per-doc", type=positive_int, default=1, help="ingest only: pages per document")
    bench.add_argument(
        "--kind",
        choices=["pdf-scan", "pdf-text", "png-scan", "jpeg-scan"],
        default="pdf-scan",
        help="ingest only: the generated documents (scanned-letter PDFs, text PDFs, A4 300-DPI PNG or JPEG scans)",
    )
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=cmd_bench)

    tiny = command("build-tiny-model", "write the tiny random-weight test model (scores are meaningless)")
    tiny.add_argument("directory", help="where to write it (about 2.4 MB)")
    tiny.add_argument("--family", choices=list(FAMILIES), default="colqwen2.5", help="model family to build")
    tiny.set_defaults(func=cmd_build_tiny_model)

    serve = command("serve", "HTTP server: search page, page images, uploads, embed, health (OpenAPI at /docs)")
    serve.add_argument("--host", help="bind address (default: COLQWEN_SERVER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: COLQWEN_SERVER_PORT, 8005)")
    serve.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback address without API keys (anyone may search)"
    )
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
        return getattr(error, "exit_code", 2)
    except ValidationError as error:  # settings read deeper down (the command's own read catches it first)
        print(f"error: {settings_error_line(error)}", file=sys.stderr)
        return 2
