"""PDF probing and page rendering with pypdfium2 or poppler's pdftoppm (runs inside the render worker).

Both renderers answer the same two questions, page by page so that one damaged page costs only
itself: page sizes in points (``probe``: None for a page the renderer cannot size, with the reason)
and the pixels of one page at a given DPI (``render_pages``: an image, or the reason it failed).
A file the renderer cannot open at all raises ``RenderError``.

Poppler is called as ``pdftoppm -f N -l N`` per page (PPM on stdout), not through pdf2image: that
saves pdf2image's extra ``pdfinfo`` and ``pdftoppm -v`` per call, and it keeps poppler's stderr
for the reason. A page poppler cannot load comes out as a 1×1 image with exit 0. (A whole-document
``pdftoppm FILE out`` run is misleading there: it writes the *previous* page's bitmap again under
the missing page's number, byte for byte, so it seems to render pages it cannot.)
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from colqwen_pipeline.documents.failures import FailureCode, RenderError

RENDERERS = ("pypdfium2", "pdf2image")  # "pdf2image": poppler (the setting's historical name)
PDFIUM_ERR_SUCCESS, PDFIUM_ERR_PASSWORD = 0, 4
_PDFINFO_SIZE = re.compile(r"^Page\s+(\d+)\s+size:\s+([\d.]+) x ([\d.]+) pts", re.M)
_PDFINFO_PAGES = re.compile(r"^Pages:\s+(\d+)", re.M)
Size = tuple[float, float]


def probe(path: Path, renderer: str, password: str) -> tuple[list[Size | None], dict[int, str]]:
    """Page sizes in PDF points, one per page (None: cannot be sized), and why, by 1-based page."""
    return _probe_pdfium(path, password) if renderer == "pypdfium2" else _probe_poppler(path, password)


def render_pages(
    path: Path, renderer: str, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image | str]]:
    """Yield (page, dpi, RGB image or the reason it failed) per 1-based (page, dpi) job, one page
    in memory at a time."""
    if renderer == "pypdfium2":
        yield from _render_pdfium(path, password, jobs)
    else:
        yield from _render_poppler(path, password, jobs)


def _open_pdfium(path: Path, password: str):  # -> pypdfium2.PdfDocument
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(path, password=password or None)
    except pdfium.PdfiumError as e:
        code = getattr(e, "err_code", None)
        if code == PDFIUM_ERR_PASSWORD:
            raise RenderError(FailureCode.PASSWORD, str(e)) from e
        if code == PDFIUM_ERR_SUCCESS:  # pdfium's way of saying "no pages"
            raise RenderError(FailureCode.NOPAGES, "PDF has no pages") from e
        raise RenderError(FailureCode.OPEN, str(e).rstrip(".")) from e
    if len(pdf) == 0:
        raise RenderError(FailureCode.NOPAGES, "PDF has no pages")
    return pdf


def _probe_pdfium(path: Path, password: str) -> tuple[list[Size | None], dict[int, str]]:
    import pypdfium2 as pdfium

    pdf = _open_pdfium(path, password)
    sizes: list[Size | None] = []
    problems: dict[int, str] = {}
    try:
        for i in range(len(pdf)):
            try:
                sizes.append(tuple(pdf.get_page_size(i)))
            except pdfium.PdfiumError as e:  # a broken page-tree entry: poppler may still cope
                sizes.append(None)
                problems[i + 1] = str(e).rstrip(".")
    finally:
        pdf.close()
    return sizes, problems


def _render_pdfium(
    path: Path, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image | str]]:
    import pypdfium2 as pdfium

    pdf = _open_pdfium(path, password)
    try:
        pdf.init_forms()  # without it, filled-in form fields are not drawn
        for page_no, dpi in jobs:
            try:
                page = pdf[page_no - 1]
                try:
                    img: Image.Image | str = page.render(scale=dpi / 72).to_pil()
                finally:
                    page.close()
            except pdfium.PdfiumError as e:
                img = str(e).rstrip(".")
            yield page_no, dpi, img
    finally:
        pdf.close()


def _poppler_error(stderr: str) -> RenderError:
    if "Incorrect password" in stderr:
        return RenderError(FailureCode.PASSWORD, "incorrect password")
    if "Invalid page count 0" in stderr or re.search(r"^Pages:\s+0$", stderr, re.M):
        return RenderError(FailureCode.NOPAGES, "PDF has no pages")
    return RenderError(FailureCode.OPEN, _last_line(stderr, "pdfinfo failed"))


def _last_line(stderr: str, default: str) -> str:
    """Poppler's most telling line: the last error, else the last line, else ``default``."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    return (errors or lines or [default])[-1][:200]


def _probe_poppler(path: Path, password: str) -> tuple[list[Size | None], dict[int, str]]:
    pw = ["-upw", password] if password else []
    head = subprocess.run(["pdfinfo", *pw, str(path)], capture_output=True, text=True, errors="replace")
    m = _PDFINFO_PAGES.search(head.stdout)
    if head.returncode != 0 or not m:
        raise _poppler_error(head.stderr + head.stdout)
    n = int(m.group(1))
    if n == 0:
        raise RenderError(FailureCode.NOPAGES, "PDF has no pages")
    every_page = ["pdfinfo", *pw, "-f", "1", "-l", str(n), str(path)]
    info = subprocess.run(every_page, capture_output=True, text=True, errors="replace")
    if info.returncode != 0:
        raise _poppler_error(info.stderr)
    found = {int(p): (float(w), float(h)) for p, w, h in _PDFINFO_SIZE.findall(info.stdout)}
    sizes = [found.get(i) if min(found.get(i, (0, 0))) > 0 else None for i in range(1, n + 1)]
    why = _last_line(info.stderr, "pdfinfo gives the page no size")
    return sizes, {i: why for i, size in enumerate(sizes, 1) if size is None}


def _render_poppler(
    path: Path, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image | str]]:
    pw = ["-upw", password] if password else []
    for page_no, dpi in jobs:
        first_last = ["-f", str(page_no), "-l", str(page_no)]
        run = subprocess.run(["pdftoppm", "-r", f"{dpi:g}", *first_last, *pw, str(path)], capture_output=True)
        stderr = run.stderr.decode(errors="replace")
        img: Image.Image | str
        try:
            img = Image.open(io.BytesIO(run.stdout))
            img.load()
        except (OSError, SyntaxError, ValueError):
            img = f"pdftoppm produced no image ({_last_line(stderr, f'exit {run.returncode}')})"
        # pdftoppm answers a page it cannot load (or an absurd one) with a 1×1 image and exit 0.
        if not isinstance(img, str) and min(img.size) <= 1:
            img = f"pdftoppm produced no image ({_last_line(stderr, 'a 1×1 page')})"
        yield page_no, dpi, img
