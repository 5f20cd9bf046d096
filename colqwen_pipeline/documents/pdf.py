"""PDF probing and page rendering with pypdfium2 or pdf2image/pdftoppm (runs inside the render worker).

Both renderers answer the same two questions: page sizes in points (``probe``) and the pixels of one
page at a given DPI (``render_pages``). pdf2image is always called one page at a time
(first_page=last_page) so that memory stays bounded whatever the page count.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from colqwen_pipeline.documents.pages import RenderFailure

RENDERERS = ("pypdfium2", "pdf2image")
PDFIUM_ERR_SUCCESS, PDFIUM_ERR_PASSWORD = 0, 4
_PDFINFO_SIZE = re.compile(r"^Page\s+(\d+)\s+size:\s+([\d.]+) x ([\d.]+) pts", re.M)
_PDFINFO_PAGES = re.compile(r"^Pages:\s+(\d+)", re.M)


def probe(path: Path, renderer: str, password: str) -> list[tuple[float, float]]:
    """Page sizes in PDF points, one per page."""
    return _probe_pdfium(path, password) if renderer == "pypdfium2" else _probe_poppler(path, password)


def render_pages(
    path: Path, renderer: str, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image]]:
    """Yield (page, dpi, RGB image) for each 1-based (page, dpi) job, one page in memory at a time."""
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
            raise RenderFailure("password", str(e)) from e
        if code == PDFIUM_ERR_SUCCESS:  # pdfium's way of saying "no pages"
            raise RenderFailure("nopages", "PDF has no pages") from e
        raise RenderFailure("open", str(e).rstrip(".")) from e
    if len(pdf) == 0:
        raise RenderFailure("nopages", "PDF has no pages")
    return pdf


def _probe_pdfium(path: Path, password: str) -> list[tuple[float, float]]:
    import pypdfium2 as pdfium

    pdf = _open_pdfium(path, password)
    sizes = []
    try:
        for i in range(len(pdf)):
            try:
                sizes.append(tuple(pdf.get_page_size(i)))
            except pdfium.PdfiumError as e:  # a broken page tree: pdftoppm may still cope
                raise RenderFailure("open", f"page {i + 1}: {e}".rstrip(".")) from e
    finally:
        pdf.close()
    return sizes


def _render_pdfium(
    path: Path, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image]]:
    import pypdfium2 as pdfium

    pdf = _open_pdfium(path, password)
    try:
        pdf.init_forms()  # without it, filled-in form fields are not drawn
        for page_no, dpi in jobs:
            try:
                page = pdf[page_no - 1]
                try:
                    img = page.render(scale=dpi / 72).to_pil()
                finally:
                    page.close()
            except pdfium.PdfiumError as e:
                raise RenderFailure("open", f"page {page_no}: {e}".rstrip(".")) from e
            yield page_no, dpi, img
    finally:
        pdf.close()


def _poppler_error(stderr: str) -> RenderFailure:
    if "Incorrect password" in stderr:
        return RenderFailure("password", "incorrect password")
    if "Invalid page count 0" in stderr or re.search(r"^Pages:\s+0$", stderr, re.M):
        return RenderFailure("nopages", "PDF has no pages")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "pdfinfo failed"
    return RenderFailure("open", last)


def _probe_poppler(path: Path, password: str) -> list[tuple[float, float]]:
    pw = ["-upw", password] if password else []
    head = subprocess.run(["pdfinfo", *pw, str(path)], capture_output=True, text=True)
    m = _PDFINFO_PAGES.search(head.stdout)
    if head.returncode != 0 or not m:
        raise _poppler_error(head.stderr + head.stdout)
    n = int(m.group(1))
    if n == 0:
        raise RenderFailure("nopages", "PDF has no pages")
    every_page = ["pdfinfo", *pw, "-f", "1", "-l", str(n), str(path)]
    info = subprocess.run(every_page, capture_output=True, text=True)
    sizes = {int(p): (float(w), float(h)) for p, w, h in _PDFINFO_SIZE.findall(info.stdout)}
    if info.returncode != 0 or len(sizes) != n:
        raise _poppler_error(info.stderr)
    return [sizes[i] for i in range(1, n + 1)]


def _render_poppler(
    path: Path, password: str, jobs: list[tuple[int, float]]
) -> Iterator[tuple[int, float, Image.Image]]:
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFPageCountError, PDFSyntaxError

    for page_no, dpi in jobs:
        try:
            pw = password or None
            images = convert_from_path(path, dpi=dpi, first_page=page_no, last_page=page_no, userpw=pw)
        except (PDFPageCountError, PDFSyntaxError) as e:
            raise _poppler_error(str(e)) from e
        # pdftoppm answers a page it cannot draw (or an absurd one) with a 1×1 image and exit 0.
        if not images or min(images[0].size) <= 1:
            raise RenderFailure("open", f"page {page_no}: pdftoppm produced no image")
        yield page_no, dpi, images[0]
