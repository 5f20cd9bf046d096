"""Writing one finished page: PNG on disk, a small preview, and its pixel hash (runs inside the render worker).

Encoding is most of a page's cost, so two things keep it small, both lossless:
- a page whose pixels are all grey (R = G = B: text, most scans) is stored as 8-bit greyscale: the
  same pixels, a third of the bytes to hash, encode, and decode again for the model;
- the PNG is written here (``write_png``) with no per-row filter and zlib level 1. Pillow picks a
  filter for every row by trying each, which cost more than the compression itself: a 200-DPI A4
  text page took 52 ms with Pillow at compress_level=1 and 21 ms here, at the same size, and
  decodes in 7.5 ms instead of 13 ms.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageChops

PREVIEW_PAGES = 3  # the Dagster UI shows the first pages of a document as thumbnails
PREVIEW_WIDTH = 160
GREY_PROBE_REDUCTION = 4


def page_name(page: int) -> str:
    return f"page-{page:04d}.png"


def preview_name(page: int) -> str:
    return f"preview-{page:04d}.jpg"


def stored_pixels(img: Image.Image) -> Image.Image:
    """The page as it is stored and hashed: greyscale ("L") when every pixel is grey, else RGB."""
    if img.mode == "L":
        return img
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    # A box average of grey pixels is grey, so colour in the reduced page proves colour in the page:
    # a colour page is told apart in ~2 ms instead of a full comparison.
    if _grey_channel(rgb.reduce(GREY_PROBE_REDUCTION)) is None:
        return rgb
    return _grey_channel(rgb) or rgb


def _grey_channel(rgb: Image.Image) -> Image.Image | None:
    red, green, blue = rgb.split()
    if ImageChops.difference(red, green).getbbox() or ImageChops.difference(red, blue).getbbox():
        return None
    return red


def pixel_sha256(img: Image.Image) -> str:
    """Hash of size + pixels, the same for the same pixels whatever mode they come in (the model
    server hashes uploads with it: the pipeline's keys). Grey pages hash their one channel."""
    return _sha256(stored_pixels(img))


def _sha256(stored: Image.Image) -> str:
    grey = "L:" if stored.mode == "L" else ""  # RGB keys are unchanged from before grey pages
    h = hashlib.sha256(f"{stored.width}x{stored.height}:{grey}".encode())
    h.update(stored.tobytes())
    return h.hexdigest()


def save_page(img: Image.Image, out_dir: Path, page: int, dpi: float) -> dict[str, Any]:
    """Write a page as PNG (compress_level=1: encoding dominates render time) and, for the first
    pages, a JPEG preview made from the pixels already in memory (not decoded again later)."""
    stored = stored_pixels(img)
    name = page_name(page)
    write_png(stored, out_dir / name)
    if page <= PREVIEW_PAGES:
        save_preview(stored, out_dir / preview_name(page))
    return {
        "page": page,
        "file": name,
        "width": stored.width,
        "height": stored.height,
        "dpi": dpi,
        "sha256": _sha256(stored),
    }


def write_png(img: Image.Image, path: Path) -> None:
    """An 8-bit greyscale or RGB image as PNG: every row unfiltered (filter byte 0), zlib level 1."""
    pixels = np.asarray(img)
    height, width = pixels.shape[:2]
    rows = np.zeros((height, pixels[0].size + 1), np.uint8)  # column 0: each row's filter byte
    rows[:, 1:] = pixels.reshape(height, -1)
    colour_type = {"L": 0, "RGB": 2}[img.mode]
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = zlib.compress(rows.tobytes(), 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def save_preview(img: Image.Image, path: Path | IO[bytes]) -> None:
    factor = max(1, img.width // (PREVIEW_WIDTH * 2))
    thumbnail = img.reduce(factor) if factor > 1 else img.copy()  # a cheap box filter first
    thumbnail.thumbnail((PREVIEW_WIDTH, PREVIEW_WIDTH * 2))
    thumbnail.convert("RGB").save(path, format="JPEG", quality=70)
