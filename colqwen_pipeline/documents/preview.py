"""Small inline thumbnails of a document's first pages, for the Dagster UI's asset metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from colqwen_pipeline.documents.manifest import Manifest


def thumbnails_markdown(pages_dir: Path, manifest: Manifest, count: int = 3, width: int = 160) -> str:
    """Markdown with the first ``count`` pages as JPEG data URIs (a few KB each), so a person sees
    what was indexed without leaving the UI."""
    cells = []
    for record in manifest.pages[:count]:
        with Image.open(pages_dir / record.file) as page:
            page.thumbnail((width, width * 2))
            buffer = io.BytesIO()
            page.convert("RGB").save(buffer, format="JPEG", quality=70)
        data = base64.b64encode(buffer.getvalue()).decode()
        cells.append(f"![page {record.page}](data:image/jpeg;base64,{data})")
    more = f"\n\n… and {len(manifest.pages) - count} more pages" if len(manifest.pages) > count else ""
    return " ".join(cells) + more
