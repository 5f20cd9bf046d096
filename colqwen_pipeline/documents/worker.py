"""The render worker: ``python -m colqwen_pipeline.documents.worker``, one JSON job per line on stdin.

It runs in its own process under an address-space limit so that a renderer crash, abort or memory
blow-up kills only the worker; it is long-lived (guard.WorkerPool hands it job after job, so the
interpreter start and the imports are paid once, not per document) and ends at the end of stdin.
Per job it prints one JSON object per line on stdout: a page record per finished page,
``{"page": n, "failed": reason}`` for a page it could not draw (the others go on),
``{"sizes": ..., "unsized": ...}`` for a probe, then ``{"done": true}``. On a failure of the whole
job it prints ``{"error": code, "message": ...}`` and exits with EXIT_FAILED: a renderer that failed
may have left its state damaged, and the next job gets a fresh worker. Imports stay light (PIL,
pypdfium2): no torch, no pydantic.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from colqwen_pipeline.documents.failures import FailureCode, RenderError
from colqwen_pipeline.documents.pages import save_page

EXIT_FAILED = 3


def run(job: dict[str, Any]) -> None:
    path = Path(job["path"])
    if job["op"] == "probe":
        from colqwen_pipeline.documents.pdf import probe

        sizes, unsized = probe(path, job["renderer"], job["password"])
        _emit({"sizes": sizes, "unsized": unsized})
    elif job["op"] == "pdf":
        from colqwen_pipeline.documents.pdf import render_pages

        rendered = render_pages(path, job["renderer"], job["password"], [tuple(j) for j in job["jobs"]])
        for page_no, dpi, img in rendered:
            if isinstance(img, str):  # the page's failure, said by the renderer
                _emit({"page": page_no, "failed": img})
            else:
                _emit(save_page(img, Path(job["out_dir"]), page_no, dpi))
    elif job["op"] == "image":
        from colqwen_pipeline.documents.images import decode_pages

        decoded = decode_pages(path, job["max_page_pixels"], job["max_pages"], job.get("page_limit"))
        for i, (image, dpi) in enumerate(decoded, 1):
            _emit(save_page(image, Path(job["out_dir"]), i, dpi))
    else:
        raise ValueError(f"unknown op {job['op']!r}")


_protocol = sys.stdout


def _emit(obj: dict[str, Any]) -> None:
    _protocol.write(json.dumps(obj) + "\n")
    _protocol.flush()  # the parent streams progress from these lines


def _reserve_stdout() -> None:
    """Keep the real stdout for the protocol; anything a library prints goes to stderr instead."""
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def main() -> int:
    _reserve_stdout()
    for line in sys.stdin:
        if line.strip():
            if not _run_one(json.loads(line)):
                return EXIT_FAILED
            _emit({"done": True})
    return 0


def _run_one(job: dict[str, Any]) -> bool:
    """Run one job; False after its failure has been reported."""
    try:
        run(job)
        return True
    except RenderError as e:
        _emit({"error": e.code.value, "message": str(e)})
    except MemoryError:
        _emit({"error": FailureCode.MEMORY.value, "message": "out of memory"})
    except Exception as e:  # anything else a renderer throws means "could not render this file"
        _emit({"error": FailureCode.OPEN.value, "message": f"{type(e).__name__}: {e}".splitlines()[0]})
    return False


if __name__ == "__main__":
    sys.exit(main())
