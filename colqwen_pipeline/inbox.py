"""The inbox: which files are documents, and the stable partition key of each."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

IGNORED_PREFIXES = (".", "~$")  # hidden files, editor/office lock files


def file_sha256(path: Path) -> str:
    """Content hash of a source file: what the sensor, the manifest and raw_documents record."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def document_key(relative_path: str) -> str:
    """Stable, readable and safe: a slug of the path plus a short hash of it.

    ``reports/Annual 2025.pdf`` -> ``reports_annual_2025.pdf-1a2b3c4d``. The hash keeps two paths
    that slug alike apart; the slug keeps the key readable in the UI.
    """
    slug = re.sub(r"[^a-z0-9._-]+", "_", relative_path.lower()).strip("_")[:80] or "document"
    digest = hashlib.sha256(relative_path.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def inbox_files(inbox: Path) -> dict[str, Path]:
    """Partition key -> file, for every regular file under the inbox."""
    files: dict[str, Path] = {}
    if not inbox.is_dir():
        return files
    for path in sorted(inbox.rglob("*")):
        relative = path.relative_to(inbox)
        if path.is_file() and not any(part.startswith(IGNORED_PREFIXES) for part in relative.parts):
            files[document_key(relative.as_posix())] = path
    return files


def find_document(inbox: Path, key: str) -> Path:
    path = inbox_files(inbox).get(key)
    if path is None:
        raise FileNotFoundError(f"no file in {inbox} has partition key {key!r} (was it moved or deleted?)")
    return path
