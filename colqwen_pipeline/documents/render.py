"""rasterize_document: one source file -> page PNGs + manifest.json, written atomically.

Policy (see also the module docs of pdf.py and images.py):
- DPI: ``dpi`` if given, else settings.dpi below settings.long_document_pages pages, else
  settings.long_document_dpi.
- Pixel cap: a page above settings.max_page_pixels is rendered at the DPI that just fits the cap;
  if that would be under MIN_SCALE (20%) of the requested DPI the page is absurd (a 200-inch poster
  or a hostile MediaBox) and the document is refused rather than rendered as an unreadable smear.
- Every renderer runs in a worker subprocess with RLIMIT_AS = settings.render_memory_mb, and the
  whole document shares one deadline of settings.render_timeout_s.
- If the configured PDF renderer cannot open or render a file, the other renderer is tried.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colqwen_pipeline.atomic import replace_dir
from colqwen_pipeline.documents.guard import WorkerError, run_workers
from colqwen_pipeline.documents.manifest import DocumentError, Manifest, PageRecord
from colqwen_pipeline.documents.office import convert_to_pdf
from colqwen_pipeline.documents.pdf import RENDERERS
from colqwen_pipeline.documents.sniff import sniff
from colqwen_pipeline.inbox import file_sha256
from colqwen_pipeline.settings import Settings

Log = Callable[[str], None]
MIN_SCALE = 0.2  # below this fraction of the requested DPI a page is refused, not shrunk
MIN_PAGES_PER_WORKER = 4  # a worker costs ~0.1 s to start: only split documents worth it
PROGRESS_EVERY = 10
# Failures the other renderer may not share. "password": a PDF encrypted with an empty *owner*
# password opens in poppler without one, in pdfium only with the user password (2 of 13 such files
# in the corpus check, see docs/rasterization.md).
FALLBACK_CODES = {"open", "nopages", "password"}


@dataclass
class _Job:
    """One document being rendered: what every step needs to know."""

    name: str
    settings: Settings
    out: Path
    deadline: float
    log: Log
    page_limit: int | None = None


def rasterize_document(
    path: Path,
    out_dir: Path,
    settings: Settings,
    dpi: int | None = None,
    log: Log | None = None,
    *,
    page_limit: int | None = None,
    source_sha256: str | None = None,
) -> Manifest:
    """Render ``path`` to ``out_dir``/page-NNNN.png + manifest.json; raise DocumentError on failure.

    ``out_dir`` is replaced only when the whole document rendered; on failure it is left as it was.
    ``page_limit`` renders only the first N pages (previews, corpus checks); the DPI policy and the
    page-count cap still look at the whole document. ``source_sha256``: the file's hash when the
    caller has it already (the file is not read twice).
    """
    if page_limit is not None and page_limit < 1:
        raise ValueError(f"page_limit must be at least 1, not {page_limit}")
    path = Path(path).resolve()
    out_dir = Path(out_dir).resolve()
    _check_file(path, settings)
    kind = sniff(path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    deadline = time.monotonic() + settings.render_timeout_s
    job = _Job(path.name, settings, tmp, deadline, log or (lambda _: None), page_limit)
    try:
        records = _render(kind, path, job, dpi)
        manifest = Manifest(str(path), source_sha256 or file_sha256(path), kind, records)
        manifest.write(tmp)
        replace_dir(tmp, out_dir)
        return manifest
    except WorkerError as e:
        raise DocumentError(f"{path.name}: {_message(e, settings)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_file(path: Path, settings: Settings) -> None:
    if not path.is_file():
        raise DocumentError(f"{path.name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise DocumentError(f"{path.name}: empty file")
    if size > settings.max_file_mb * 1024 * 1024:
        raise DocumentError(
            f"{path.name}: file is {size / 2**20:.0f} MB, over the cap of "
            f"{settings.max_file_mb} MB (COLQWEN_MAX_FILE_MB)"
        )


def _render(kind: str, path: Path, job: _Job, dpi: int | None) -> list[PageRecord]:
    if kind == "pdf":
        return _render_pdf(path, job, dpi, prefix="")
    if kind == "image":
        return _render_image(path, job)
    with tempfile.TemporaryDirectory(prefix="colqwen-office-") as work:
        pdf = convert_to_pdf(path, Path(work), job.settings.render_memory_mb, job.deadline)
        return _render_pdf(pdf, job, dpi, prefix="libreoffice+")


def _render_image(path: Path, job: _Job) -> list[PageRecord]:
    spec = {
        "op": "image",
        "path": str(path),
        "out_dir": str(job.out),
        "max_page_pixels": job.settings.max_page_pixels,
        "max_pages": job.settings.max_pages,
        "page_limit": job.page_limit,
    }
    lines: list[dict[str, Any]] = []
    run_workers([spec], job.settings.render_memory_mb, job.deadline, lines.append)
    return [PageRecord(renderer="pillow", **line) for line in lines]


def _render_pdf(path: Path, job: _Job, dpi: int | None, prefix: str) -> list[PageRecord]:
    first = job.settings.pdf_renderer
    order = [first, *(r for r in RENDERERS if r != first)]
    failures: list[WorkerError] = []
    for renderer in order:
        try:
            return _render_pdf_with(renderer, path, job, dpi, prefix)
        except WorkerError as e:
            if e.code not in FALLBACK_CODES:
                raise
            failures.append(e)
            _clear_pages(job.out)
            job.log(f"{job.name}: {renderer} could not render it ({e}); trying the next renderer")
    for failure in failures:  # the clearest cause wins over "cannot render PDF: a; b"
        if failure.code == "password":
            raise failure
    if all(f.code == "nopages" for f in failures):
        raise failures[0]
    tried = "; ".join(f"{r}: {f}" for r, f in zip(order, failures, strict=True))
    raise WorkerError("open", f"cannot render PDF: {tried}")


def _render_pdf_with(renderer: str, path: Path, job: _Job, dpi: int | None, prefix: str) -> list[PageRecord]:
    common = {"path": str(path), "renderer": renderer, "password": job.settings.pdf_password}
    sizes: list[list[float]] = []
    run_workers(
        [{"op": "probe", **common}],
        job.settings.render_memory_mb,
        job.deadline,
        lambda line: sizes.extend(line["sizes"]),
    )
    jobs = _plan_pages(sizes, dpi, job.settings, job.page_limit)
    n_workers = max(1, min(os.cpu_count() or 1, len(jobs) // MIN_PAGES_PER_WORKER))
    if len(jobs) >= PROGRESS_EVERY:
        job.log(f"{job.name}: rendering {len(jobs)} pages with {renderer} in {n_workers} worker(s)")
    lines: list[dict[str, Any]] = []

    def collect(line: dict[str, Any]) -> None:
        lines.append(line)
        if len(lines) % PROGRESS_EVERY == 0:
            job.log(f"{job.name}: {len(lines)}/{len(jobs)} pages")

    # Page i goes to worker i % N: neighbouring pages cost alike, so the workers finish together.
    spec = {"op": "pdf", **common, "out_dir": str(job.out)}
    specs = [{**spec, "jobs": jobs[k::n_workers]} for k in range(n_workers)]
    run_workers(specs, job.settings.render_memory_mb, job.deadline, collect)
    lines.sort(key=lambda line: line["page"])
    return [PageRecord(renderer=prefix + renderer, **line) for line in lines]


def _plan_pages(
    sizes: list[list[float]], dpi: int | None, settings: Settings, page_limit: int | None = None
) -> list[tuple[int, float]]:
    """(page, dpi) per page to render: the DPI policy, shrunk per page to fit the pixel cap."""
    if len(sizes) > settings.max_pages:
        raise WorkerError(
            "pages", f"PDF has {len(sizes)} pages, over the cap of {settings.max_pages} (COLQWEN_MAX_PAGES)"
        )
    base = dpi or (settings.dpi if len(sizes) < settings.long_document_pages else settings.long_document_dpi)
    pages = enumerate(sizes[:page_limit], 1)
    return [(i, _page_dpi(i, w, h, base, settings.max_page_pixels)) for i, (w, h) in pages]


def _page_dpi(page: int, w_pt: float, h_pt: float, dpi: float, cap: int) -> float:
    def pixels(d: float) -> int:  # an upper bound: renderers round (or float-error) partial pixels up
        return (math.floor(w_pt * d / 72) + 1) * (math.floor(h_pt * d / 72) + 1)

    if pixels(dpi) <= cap:
        return dpi
    scale = math.sqrt(cap / pixels(dpi))
    if scale < MIN_SCALE:
        w, h = round(w_pt * dpi / 72), round(h_pt * dpi / 72)
        raise WorkerError("pixels", f"page {page} would be {w}×{h} px, over the cap")
    fitted = math.floor(dpi * scale * 100) / 100  # two decimals, stepped down until it fits
    while pixels(fitted) > cap:
        fitted = round(fitted - 0.01, 2)
    return fitted


def _clear_pages(out: Path) -> None:
    for png in out.glob("page-*.png"):
        png.unlink()


def _message(e: WorkerError, settings: Settings) -> str:
    if e.code == "memory":
        return f"renderer exceeded {settings.render_memory_mb} MB"
    if e.code == "timeout":
        return f"renderer exceeded {settings.render_timeout_s:g} s"
    if e.code == "password":
        if not settings.pdf_password:
            return "encrypted PDF: no password configured (set COLQWEN_PDF_PASSWORD)"
        return "encrypted PDF: wrong password (COLQWEN_PDF_PASSWORD)"
    return str(e)
