"""Decoding image files into RGB pages with Pillow (runs inside the render worker).

Image pages are not resampled to a DPI: their pixels are the page. ``dpi`` records the file's own
resolution when it declares one (else 0), scaled down with the image if the pixel cap shrank it.
Pixel cap: a frame up to DECODE_FACTOR × max_page_pixels is decoded and scaled down to fit the cap;
a larger one is refused before its pixels are decoded (and Pillow's own bomb check backs that up).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence

from colqwen_pipeline.documents.failures import FailureCode, RenderError

MULTI_PAGE_FORMATS = {"TIFF"}  # GIF/APNG/WebP animations: the first frame is the page
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
DECODE_FACTOR = 4  # 4 × 40 Mpx as RGBA is 640 MB: well inside the worker's default memory cap


def set_bomb_limit(max_page_pixels: int) -> None:
    """Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; our own check is stricter."""
    Image.MAX_IMAGE_PIXELS = max_page_pixels * DECODE_FACTOR
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def decode_pages(
    path: Path, max_page_pixels: int, max_pages: int, page_limit: int | None = None
) -> Iterator[tuple[Image.Image, float]]:
    """Yield (RGB page, dpi) per page: every TIFF frame (the first ``page_limit`` if given), the first
    frame of anything else."""
    set_bomb_limit(max_page_pixels)
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1) if im.format in MULTI_PAGE_FORMATS else 1
            if n > max_pages:
                cap = f"over the cap of {max_pages} (COLQWEN_MAX_PAGES)"
                raise RenderError(FailureCode.PAGES, f"image has {n} pages, {cap}")
            n = min(n, page_limit or n)
            frames = ImageSequence.Iterator(im) if n > 1 else [im]
            for page, frame in zip(range(1, n + 1), frames, strict=False):
                w, h = frame.size  # known from the header: nothing decoded yet
                if w * h > max_page_pixels * DECODE_FACTOR:
                    raise RenderError(FailureCode.PIXELS, f"page {page} is {w}×{h} px, over the cap")
                yield _to_page(frame, max_page_pixels)
    except Image.DecompressionBombError as e:
        raise RenderError(FailureCode.PIXELS, f"image over the pixel cap: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "corrupt"
        raise RenderError(FailureCode.OPEN, f"cannot decode image: {e}") from e


def _to_page(frame: Image.Image, max_page_pixels: int) -> tuple[Image.Image, float]:
    dpi = _declared_dpi(frame)
    img = to_page_mode(ImageOps.exif_transpose(frame))
    pixels = img.width * img.height
    if pixels > max_page_pixels:
        scale = math.sqrt(max_page_pixels / pixels)
        size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        dpi *= scale
    return img, round(dpi, 2)


def _declared_dpi(img: Image.Image) -> float:
    dpi = img.info.get("dpi")
    try:
        return float(dpi[0]) if dpi and float(dpi[0]) > 1 else 0.0
    except (TypeError, ValueError):
        return 0.0


def to_page_mode(img: Image.Image) -> Image.Image:
    """A greyscale scan stays greyscale (the page is stored so: pages.stored_pixels); anything else, RGB."""
    if img.mode in ("L", "1"):
        return img.convert("L")
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in SIXTEEN_BIT_MODES:
        # Map the full 16-bit range to 8 bits (plain convert("L") clips everything above 255).
        return img.convert("I").point(lambda v: v / 257, "L").convert("RGB")
    if img.mode == "F":
        return img.point(lambda v: v * 255).convert("L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Composite on white: convert("RGB") would turn transparent pixels black.
        rgba = img.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return img.convert("RGB")
