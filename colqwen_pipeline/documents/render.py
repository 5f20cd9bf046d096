"""rasterize_document: one source file -> page PNGs + manifest.json, written atomically.

Policy (see also the module docs of pdf.py and images.py):
- DPI: ``dpi`` if given, else settings.dpi below settings.long_document_pages pages, else
  settings.long_document_dpi.
- Pixel cap: a page above settings.max_page_pixels is rendered at the DPI that just fits the cap;
  if that would be under MIN_SCALE (20%) of the requested DPI the page is absurd (a 200-inch poster
  or a hostile MediaBox) and it is skipped rather than rendered as an unreadable smear.
- Every renderer runs in a worker subprocess with RLIMIT_AS = settings.render_memory_mb, and the
  whole document shares one deadline of settings.render_timeout_s.
- If the configured PDF renderer cannot open a file, or size or draw some of its pages, the other
  renderer is tried for the file or for those pages. A page neither draws is skipped: the document
  is *partial* (``Manifest.skipped`` says which and why) unless settings.allow_partial is false; a
  document with no page drawn fails.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colqwen_pipeline.common.atomic import replace_dir
from colqwen_pipeline.documents.failures import FALLBACK_CODES, FailureCode, RenderError
from colqwen_pipeline.documents.guard import run_workers
from colqwen_pipeline.documents.manifest import MAX_SKIPPED_SHOWN, DocumentError, Manifest, PageRecord, SkippedPage
from colqwen_pipeline.documents.office import convert_to_pdf
from colqwen_pipeline.documents.pages import preview_name
from colqwen_pipeline.documents.pdf import RENDERERS
from colqwen_pipeline.documents.sniff import sniff
from colqwen_pipeline.inbox import file_sha256
from colqwen_pipeline.settings import Settings

Log = Callable[[str], None]
MIN_SCALE = 0.2  # below this fraction of the requested DPI a page is refused, not shrunk
MIN_PAGES_PER_WORKER = 4  # a worker costs ~0.1 s to start: only split documents worth it
PROGRESS_EVERY = 10


@dataclass
class _Job:
    """One document being rendered: what every step needs to know."""

    name: str
    settings: Settings
    out: Path
    deadline: float
    log: Log
    page_limit: int | None = None
    tried: list[str] = field(default_factory=list)  # PDF renderers asked, in order


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

    ``out_dir`` is replaced only when the document rendered (all of it, or the pages the renderers
    could draw: see ``Manifest.skipped``); on failure it is left as it was.
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
        records, skipped = _render(kind, path, job, dpi)
        tried = sorted({p.renderer for p in records}) if kind == "image" else job.tried
        manifest = Manifest(
            str(path), source_sha256 or file_sha256(path), kind, records, skipped=skipped, renderers_tried=tried
        )
        manifest.write(tmp)
        replace_dir(tmp, out_dir)
        if skipped:
            job.log(f"{path.name}: {manifest.summary()}")
        return manifest
    except RenderError as e:
        raise DocumentError(f"{path.name}: {_message(e, settings)}", renderers_tried=job.tried) from None
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


def _render(kind: str, path: Path, job: _Job, dpi: int | None) -> tuple[list[PageRecord], list[SkippedPage]]:
    if kind == "pdf":
        return _render_pdf(path, job, dpi, prefix="")
    if kind == "image":
        return _render_image(path, job), []
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


def _render_pdf(path: Path, job: _Job, dpi: int | None, prefix: str) -> tuple[list[PageRecord], list[SkippedPage]]:
    """Every page by the first renderer that draws it: the configured one, then the other for the
    pages (or the whole file) it failed on. A page both fail on is skipped, with both reasons."""
    first = job.settings.pdf_renderer
    pdf = _PdfRun(path, job, dpi, prefix)
    job.tried = pdf.tried
    order = [first, *(r for r in RENDERERS if r != first)]
    for number, renderer in enumerate(order, 1):
        pdf.try_renderer(renderer, last=number == len(order))
        if pdf.pending == []:
            break
    if pdf.pending is None:  # no renderer could open the file
        raise pdf.refusal()
    _keep_only(job.out, pdf.records)
    records = [pdf.records[page] for page in sorted(pdf.records)]
    return records, pdf.skipped()


class _PdfRun:
    """One PDF through the renderers in turn: what has been drawn, what is still to draw, and why
    each renderer failed on what it could not draw."""

    def __init__(self, path: Path, job: _Job, dpi: int | None, prefix: str) -> None:
        self.path, self.job, self.dpi, self.prefix = path, job, dpi, prefix
        self.pending: list[int] | None = None  # None until a renderer opened the file
        self.base_dpi = 0.0
        self.records: dict[int, PageRecord] = {}
        self.reasons: dict[int, list[str]] = {}  # page -> "renderer: why" per renderer that failed on it
        self.policy_skips: dict[int, str] = {}  # pages refused by our caps: no renderer is asked again
        self.refusals: list[tuple[str, RenderError]] = []  # renderers that could not open the file
        self.tried: list[str] = []

    def try_renderer(self, renderer: str, last: bool) -> None:
        self.tried.append(renderer)
        try:
            sizes, unsized = self._probe(renderer)
        except RenderError as e:
            if e.code not in FALLBACK_CODES:
                raise
            self.refusals.append((renderer, e))
            for page in self.pending or []:
                self.reasons.setdefault(page, []).append(f"{renderer}: {e}")
            then = "" if last else "; trying the next renderer"
            self.job.log(f"{self.job.name}: {renderer} could not render it ({e}){then}")
            return
        if self.pending is None:
            self._start(len(sizes))
        assert self.pending is not None
        jobs = []
        for page in self.pending:
            size = sizes[page - 1] if page <= len(sizes) else None
            if size is None:
                why = unsized.get(page, f"the file has only {len(sizes)} pages here")
                self.reasons.setdefault(page, []).append(f"{renderer}: {why}")
                continue
            width_pt, height_pt = size
            cap = self.job.settings.max_page_pixels
            try:
                jobs.append((page, _page_dpi(page, width_pt, height_pt, self.base_dpi, cap)))
            except RenderError as e:  # over the pixel cap: the same in every renderer
                self.policy_skips[page] = str(e)
        self._draw(renderer, jobs)
        self.pending = [p for p in self.pending if p not in self.records and p not in self.policy_skips]
        if self.pending and not last:
            pages = _pages_text(self.pending)
            self.job.log(f"{self.job.name}: {renderer} could not render page(s) {pages}; trying the next renderer")

    def _start(self, total: int) -> None:
        settings = self.job.settings
        if total > settings.max_pages:
            raise RenderError(
                FailureCode.PAGES,
                f"PDF has {total} pages, over the cap of {settings.max_pages} (COLQWEN_MAX_PAGES)",
            )
        self.base_dpi = self.dpi or (
            settings.dpi if total < settings.long_document_pages else settings.long_document_dpi
        )
        self.pending = list(range(1, min(total, self.job.page_limit or total) + 1))
        # Pages a renderer that could not open the file would have been asked for.
        for renderer, e in self.refusals:
            for page in self.pending:
                self.reasons.setdefault(page, []).append(f"{renderer}: {e}")

    def _probe(self, renderer: str) -> tuple[list[list[float] | None], dict[int, str]]:
        common = {"path": str(self.path), "renderer": renderer, "password": self.job.settings.pdf_password}
        answer: dict[str, Any] = {}
        run_workers([{"op": "probe", **common}], self.job.settings.render_memory_mb, self.job.deadline, answer.update)
        return answer["sizes"], {int(page): why for page, why in answer["unsized"].items()}

    def _draw(self, renderer: str, jobs: list[tuple[int, float]]) -> None:
        """Render ``jobs`` in parallel workers; a worker that dies costs its unfinished pages, which
        the next renderer is asked for (memory and time limits still fail the document)."""
        if not jobs:
            return
        n_workers = max(1, min(os.cpu_count() or 1, len(jobs) // MIN_PAGES_PER_WORKER))
        if len(jobs) >= PROGRESS_EVERY:
            self.job.log(f"{self.job.name}: rendering {len(jobs)} pages with {renderer} in {n_workers} worker(s)")
        drawn = 0

        def collect(line: dict[str, Any]) -> None:
            nonlocal drawn
            page = line["page"]
            if "failed" in line:
                self.reasons.setdefault(page, []).append(f"{renderer}: {line['failed']}")
                return
            self.records[page] = PageRecord(renderer=self.prefix + renderer, **line)
            drawn += 1
            if drawn % PROGRESS_EVERY == 0:
                self.job.log(f"{self.job.name}: {drawn}/{len(jobs)} pages")

        # Page i goes to worker i % N: neighbouring pages cost alike, so the workers finish together.
        spec = {"op": "pdf", "path": str(self.path), "renderer": renderer}
        spec |= {"password": self.job.settings.pdf_password, "out_dir": str(self.job.out)}
        specs = [{**spec, "jobs": jobs[k::n_workers]} for k in range(n_workers)]
        try:
            run_workers(specs, self.job.settings.render_memory_mb, self.job.deadline, collect)
        except RenderError as e:
            if e.code not in FALLBACK_CODES:
                raise
            for page, _ in jobs:
                if page not in self.records:
                    self.reasons.setdefault(page, []).append(f"{renderer}: {e}")

    def skipped(self) -> list[SkippedPage]:
        """The pages nobody drew, with every reason; refuses the document when nothing was drawn,
        or when anything is missing and partial documents are not allowed."""
        assert self.pending is not None
        missing = {p: "; ".join(self.reasons.get(p, [])) for p in self.pending} | self.policy_skips
        skipped = [SkippedPage(page, missing[page]) for page in sorted(missing)]
        if not skipped:
            return []
        named = "; ".join(f"page {s.page}: {s.reason}" for s in skipped[:MAX_SKIPPED_SHOWN])
        named += f"; … and {len(skipped) - MAX_SKIPPED_SHOWN} more" if len(skipped) > MAX_SKIPPED_SHOWN else ""
        total = len(skipped) + len(self.records)
        if not self.records:
            raise RenderError(FailureCode.OPEN, f"no page could be rendered: {named}")
        if not self.job.settings.allow_partial:
            raise RenderError(
                FailureCode.OPEN,
                f"{len(self.records)} of {total} pages rendered (COLQWEN_ALLOW_PARTIAL=false): {named}",
            )
        return skipped

    def refusal(self) -> RenderError:
        """No renderer opened the file: the clearest cause wins over "cannot render PDF: a; b"."""
        for _, failure in self.refusals:
            if failure.code == FailureCode.PASSWORD:
                return failure
        if all(f.code == FailureCode.NOPAGES for _, f in self.refusals):
            return self.refusals[0][1]
        tried = "; ".join(f"{r}: {f}" for r, f in self.refusals)
        return RenderError(FailureCode.OPEN, f"cannot render PDF: {tried}")


def _pages_text(pages: list[int]) -> str:
    shown = ", ".join(map(str, pages[:MAX_SKIPPED_SHOWN]))
    return shown + (f" and {len(pages) - MAX_SKIPPED_SHOWN} more" if len(pages) > MAX_SKIPPED_SHOWN else "")


def _page_dpi(page: int, w_pt: float, h_pt: float, dpi: float, cap: int) -> float:
    def pixels(d: float) -> int:  # an upper bound: renderers round (or float-error) partial pixels up
        return (math.floor(w_pt * d / 72) + 1) * (math.floor(h_pt * d / 72) + 1)

    if pixels(dpi) <= cap:
        return dpi
    scale = math.sqrt(cap / pixels(dpi))
    if scale < MIN_SCALE:
        w, h = round(w_pt * dpi / 72), round(h_pt * dpi / 72)
        raise RenderError(FailureCode.PIXELS, f"would be {w}×{h} px, over the cap")
    fitted = math.floor(dpi * scale * 100) / 100  # two decimals, stepped down until it fits
    while pixels(fitted) > cap:
        fitted = round(fitted - 0.01, 2)
    return fitted


def _keep_only(out: Path, records: dict[int, PageRecord]) -> None:
    """Drop pages and previews no record vouches for (written by a worker that died before reporting them)."""
    wanted = {record.file for record in records.values()} | {preview_name(page) for page in records}
    for written in [*out.glob("page-*.png"), *out.glob("preview-*.jpg")]:
        if written.name not in wanted:
            written.unlink()


TRUSTED = "raise %s if you trust the file"


def _message(e: RenderError, settings: Settings) -> str:
    if e.code == FailureCode.MEMORY:  # which limit stopped it, and the setting that moves it
        return f"renderer exceeded {settings.render_memory_mb} MB of memory ({TRUSTED % 'COLQWEN_RENDER_MEMORY_MB'})"
    if e.code == FailureCode.TIMEOUT:
        return f"renderer exceeded {settings.render_timeout_s:g} s ({TRUSTED % 'COLQWEN_RENDER_TIMEOUT_S'})"
    if e.code == FailureCode.PASSWORD:
        if not settings.pdf_password:
            return "encrypted PDF: no password configured (set COLQWEN_PDF_PASSWORD)"
        return "encrypted PDF: wrong password (COLQWEN_PDF_PASSWORD)"
    return str(e)
