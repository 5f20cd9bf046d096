"""Rasterise every PDF under a folder and report how the rasteriser copes with real-world files.

    .venv/bin/python scripts/corpus_check.py FOLDER [--pages 3] [--dpi 150] [--timeout 60] [--json]

Each file gets the first ``--pages`` pages rendered into a throw-away folder with
``rasterize_document`` under a render time limit of ``--timeout`` seconds. The calls run in a
helper process watched from here: if one has not answered ``--grace`` seconds after its own limit,
the file counts as *hung*, the helper's whole process tree is killed and a fresh helper goes on.

Outcomes per file: rendered (every page; by the configured renderer, or partly or wholly by the
other one), partial (rendered without the pages neither renderer could draw), failed with a clear
error (a one-line DocumentError that names the file; grouped by cause), failed with an unclear
error (one that leaks internals), crashed (any other exception) or hung. The last three should be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import re
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

# Internals leaking into a message: a Python exception name ("KeyError: ..."), a bare exit status.
UNCLEAR = re.compile(r"worker exited|no output|Traceback|object has no attribute|\b[A-Za-z]+(Error|Exception): |\n")


def render_one(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Runs in the helper: rasterise one file, describe the outcome as plain JSON-able data."""
    from colqwen_pipeline.documents import DocumentError, rasterize_document
    from colqwen_pipeline.settings import Settings

    settings = Settings(_env_file=None, render_timeout_s=options["timeout"], pdf_renderer=options["renderer"])
    started = time.perf_counter()
    result: dict[str, Any] = {"file": path, "fallback_tried": False, "by_fallback": False}
    with tempfile.TemporaryDirectory(prefix="corpus-check-") as tmp:
        try:
            manifest = rasterize_document(
                Path(path), Path(tmp) / "out", settings, options["dpi"], page_limit=options["pages"]
            )
            renderers = {p.renderer for p in manifest.pages}
            result |= {
                "status": "partial" if manifest.skipped else "rendered",
                "pages": len(manifest.pages),
                "skipped": [{"page": s.page, "reason": s.reason} for s in manifest.skipped],
                "renderer": ",".join(sorted(renderers)),
                "fallback_tried": len(manifest.renderers_tried) > 1,
                "by_fallback": renderers != {options["renderer"]},  # some or all pages by the other one
            }
        except DocumentError as e:
            result |= {"status": "failed", "message": str(e), "fallback_tried": len(e.renderers_tried) > 1}
        except Exception as e:  # noqa: BLE001 - anything but DocumentError is a bug to report
            result |= {"status": "crashed", "message": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def helper_main(conn: Connection, options: dict[str, Any]) -> None:
    while (path := conn.recv()) is not None:
        conn.send(render_one(path, options))


class Helper:
    """One long-lived helper process (imports paid once) that can be killed with its workers."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=helper_main, args=(child, self.options), daemon=True)
        self.process.start()

    def run(self, path: Path, wait_s: float) -> dict[str, Any]:
        started = time.perf_counter()
        self.conn.send(str(path))
        if self.conn.poll(wait_s):
            try:
                return self.conn.recv()
            except EOFError:
                status, message = "crashed", "helper process died"
        else:
            status, message = "hung", f"no answer after {wait_s:g} s"
        self.restart()
        seconds = round(time.perf_counter() - started, 3)
        return {
            "file": str(path),
            "status": status,
            "message": message,
            "fallback_tried": False,
            "by_fallback": False,
            "seconds": seconds,
        }

    def restart(self) -> None:
        self.kill()
        self._start()

    def kill(self) -> None:
        """The render workers run in their own sessions (a group kill misses them): kill by pid."""
        try:
            root = psutil.Process(self.process.pid)
            tree = [*root.children(recursive=True), root]
        except psutil.Error:
            tree = []
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.process.join(5)

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(10)
        self.kill()


def cause(message: str, file_name: str) -> str:
    """Group failures: drop the file name, numbers and object ids, keep the first renderer's reason."""
    text = message.removeprefix(f"{file_name}: ")
    text = re.sub(r"\b\d+\b", "N", text)  # "page 12" -> "page N"; "pypdfium2" stays
    if text.startswith("cannot render PDF: "):
        text = text.split("; ")[0]  # "cannot render PDF: first: why; second: why" -> the first reason
    return text[:160]


def is_clear(message: str, file_name: str) -> bool:
    return message.startswith(f"{file_name}: ") and not UNCLEAR.search(message)


def summarise(results: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
    rendered = [r for r in results if r["status"] in ("rendered", "partial")]
    partial = [r for r in rendered if r["status"] == "partial"]
    failed = [r for r in results if r["status"] == "failed"]
    clear = [r for r in failed if is_clear(r["message"], Path(r["file"]).name)]
    unclear = [r for r in failed if r not in clear]
    by_fallback = [r for r in rendered if r["by_fallback"]]
    slowest = max(results, key=lambda r: r["seconds"], default=None)
    return {
        "files": len(results),
        "options": options,
        "rendered": len(rendered),
        "rendered_pages": sum(r["pages"] for r in rendered),
        "rendered_by_fallback": len(by_fallback),
        "partial": len(partial),
        "skipped_pages": sum(len(r["skipped"]) for r in partial),
        "failed_clear": len(clear),
        "failed_unclear": len(unclear),
        "crashed": sum(r["status"] == "crashed" for r in results),
        "hung": sum(r["status"] == "hung" for r in results),
        "fallback": {
            "first_renderer_refused": sum(r["fallback_tried"] for r in rendered + failed),
            "rescued_by_fallback": len(by_fallback),
        },
        "causes": dict(Counter(cause(r["message"], Path(r["file"]).name) for r in clear).most_common()),
        "slowest": {"file": slowest["file"], "seconds": slowest["seconds"]} if slowest else None,
        "seconds_total": round(sum(r["seconds"] for r in results), 1),
        "failures": {r["file"]: r["message"] for r in clear},
        "rescued": [r["file"] for r in by_fallback],
        "partials": {r["file"]: r["skipped"] for r in partial},
        "problems": [r for r in results if r["status"] in ("crashed", "hung")] + unclear,
    }


def print_report(summary: dict[str, Any]) -> None:
    print(f"files                    {summary['files']}")
    print(f"rendered                 {summary['rendered']} ({summary['rendered_pages']} pages)")
    print(f"  of which by fallback   {summary['rendered_by_fallback']} (some or all pages)")
    print(f"  of which partial       {summary['partial']} ({summary['skipped_pages']} pages skipped)")
    print(f"failed, clear error      {summary['failed_clear']}")
    for text, count in summary["causes"].items():
        print(f"  {count:4d}  {text}")
    print(f"failed, unclear error    {summary['failed_unclear']}")
    print(f"crashed                  {summary['crashed']}")
    print(f"hung                     {summary['hung']}")
    fb = summary["fallback"]
    refused, rescued = fb["first_renderer_refused"], fb["rescued_by_fallback"]
    print(f"fallback                 first renderer refused {refused}, rescued {rescued}")
    if summary["slowest"]:
        print(f"slowest                  {summary['slowest']['seconds']:.2f} s  {summary['slowest']['file']}")
    print(f"total render time        {summary['seconds_total']} s")
    for problem in summary["problems"]:
        print(f"PROBLEM {problem['status']}: {problem['file']}: {problem['message']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pages", type=int, default=3, help="pages rendered per file (default 3)")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--timeout", type=float, default=60.0, help="render time limit per file, seconds")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds past the limit before 'hung'")
    parser.add_argument("--renderer", choices=["pypdfium2", "pdf2image"], default="pypdfium2")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--progress", action="store_true", help="one line per file on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = sorted(p for p in args.folder.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not files:
        print(f"{args.folder}: no PDF files found", file=sys.stderr)
        return 2
    options = {"pages": args.pages, "dpi": args.dpi, "timeout": args.timeout, "renderer": args.renderer}
    helper = Helper(options)
    results = []
    try:
        for number, path in enumerate(files, 1):
            results.append(helper.run(path, args.timeout + args.grace))
            if args.progress:
                r = results[-1]
                print(f"[{number}/{len(files)}] {r['status']:8s} {r['seconds']:6.2f}s {path}", file=sys.stderr)
    finally:
        helper.close()
    summary = summarise(results, options)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_report(summary)
    return 1 if summary["crashed"] or summary["hung"] or summary["failed_unclear"] else 0


if __name__ == "__main__":
    sys.exit(main())
