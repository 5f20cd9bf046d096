"""Writing one finished page: PNG on disk plus its pixel hash (runs inside the render worker)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from PIL import Image


def page_name(page: int) -> str:
    return f"page-{page:04d}.png"


def pixel_sha256(img: Image.Image) -> str:
    """Hash of size + raw RGB bytes: identical pixels give identical keys across runs."""
    h = hashlib.sha256(f"{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def save_page(img: Image.Image, out_dir: Path, page: int, dpi: float) -> dict[str, Any]:
    """Write an RGB page as PNG; compress_level=1 because PNG encoding dominates render time."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    name = page_name(page)
    img.save(out_dir / name, format="PNG", compress_level=1)
    return {
        "page": page,
        "file": name,
        "width": img.width,
        "height": img.height,
        "dpi": dpi,
        "sha256": pixel_sha256(img),
    }
