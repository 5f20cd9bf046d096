"""Small inline thumbnails of a document's first pages, for the Dagster UI's asset metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.documents.pages import PREVIEW_PAGES, preview_name, save_preview


def thumbnails_markdown(pages_dir: Path, manifest: Manifest, count: int = PREVIEW_PAGES) -> str:
    """Markdown with the first ``count`` pages as JPEG data URIs (a few KB each), so a person sees
    what was indexed without leaving the UI. The render worker wrote them from the pixels it had;
    pages rendered before it did are thumbnailed from their PNG here."""
    cells = []
    for record in manifest.pages[:count]:
        data = base64.b64encode(_preview_jpeg(pages_dir, record.page, record.file)).decode()
        cells.append(f"![page {record.page}](data:image/jpeg;base64,{data})")
    more = f"\n\n… and {len(manifest.pages) - count} more pages" if len(manifest.pages) > count else ""
    return " ".join(cells) + more


def _preview_jpeg(pages_dir: Path, page: int, file: str) -> bytes:
    preview = pages_dir / preview_name(page)
    if preview.is_file():
        return preview.read_bytes()
    buffer = io.BytesIO()
    with Image.open(pages_dir / file) as image:
        image.load()
        save_preview(image, buffer)
    return buffer.getvalue()
