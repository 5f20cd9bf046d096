"""The inbox: which files are documents, the stable partition key of each, and the guard that
keeps a vanished inbox from emptying the index."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from colqwen_pipeline.common.errors import PipelineError

IGNORED_PREFIXES = (".", "~$")  # hidden files, editor/office lock files
# An inbox that lost more than this share of its known documents, and more than MASS_REMOVAL_MIN of
# them, was more likely unmounted or emptied by mistake than cleaned up on purpose.
MASS_REMOVAL_SHARE = 0.5
MASS_REMOVAL_MIN = 10


class InboxError(PipelineError):
    """The inbox folder is missing or unreadable: nothing can be ingested, and nothing is removed."""


def file_sha256(path: Path) -> str:
    """Content hash of a source file: what the sensor, the manifest and raw_documents record."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def readable(text: str) -> str:
    r"""Text that every UTF-8 surface (JSON, HTML, Milvus VARCHAR, Dagster) can carry. A file name
    that is not UTF-8 (a Latin-1 ``caf\xe9.pdf`` from a Samba share) reaches Python with its odd
    bytes as lone surrogates, which no UTF-8 encoder accepts: they are written ``\xe9`` instead,
    as ``ls -b`` does. A UTF-8 name is returned unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: not from the file system
        return text.encode("utf-8", "backslashreplace").decode()


def printable(name: str) -> str:
    """A file name as it may appear in one log line: readable(), and control characters (a newline
    in a name would split the line) written as escapes; any other character, non-ASCII included, as is."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in readable(name))


def document_name(inbox: Path, path: Path) -> str:
    """The document's path relative to the inbox, as users see it (search hits, /documents, logs)."""
    return readable(path.relative_to(inbox).as_posix())


def document_key(relative_path: str) -> str:
    r"""Stable, readable and safe: a slug of the path plus a short hash of it.

    ``reports/Annual 2025.pdf`` -> ``reports_annual_2025.pdf-1a2b3c4d``. The hash keeps two paths
    that slug alike apart; the slug keeps the key readable in the UI. The hash is of the name's bytes
    on disk, so a name that is not UTF-8 has a key of its own too (``caf\xe9.pdf`` -> ``caf_.pdf-…``).
    """
    slug = re.sub(r"[^a-z0-9._-]+", "_", relative_path.lower()).strip("_")[:80] or "document"
    digest = hashlib.sha256(os.fsencode(relative_path)).hexdigest()[:8]
    return f"{slug}-{digest}"


def require_inbox(inbox: Path) -> None:
    """Refuse a missing or unreadable inbox: to the pipeline it would look like every document was deleted."""
    where = f" (relative to {Path.cwd()})" if not inbox.is_absolute() else ""
    if not inbox.exists():
        raise InboxError(f"inbox {inbox}{where} does not exist: create it or set COLQWEN_INBOX")
    if not inbox.is_dir():
        raise InboxError(f"inbox {inbox}{where} is not a folder: set COLQWEN_INBOX to a folder")
    if not os.access(inbox, os.R_OK | os.X_OK):
        raise InboxError(f"inbox {inbox}{where} is not readable by this user")


def inbox_files(inbox: Path) -> dict[str, Path]:
    """Partition key -> file, for every regular file under the inbox (InboxError if there is no inbox).

    A symbolic link counts only when it points inside the inbox: a link to /etc/passwd or to
    another user's files is not a document of this inbox."""
    require_inbox(inbox)
    root = inbox.resolve()
    files: dict[str, Path] = {}
    for path in sorted(inbox.rglob("*")):
        relative = path.relative_to(inbox)
        if any(part.startswith(IGNORED_PREFIXES) for part in relative.parts) or not path.is_file():
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            continue
        files[document_key(relative.as_posix())] = path
    return files


def find_document(inbox: Path, key: str) -> Path:
    path = inbox_files(inbox).get(key)
    if path is None:
        raise FileNotFoundError(f"no file in {inbox} has partition key {key!r} (was it moved or deleted?)")
    return path


def mass_removal(known: int, gone: int) -> str | None:
    """Why removing ``gone`` of ``known`` documents looks like an accident (an unmounted share), or None."""
    if gone > MASS_REMOVAL_MIN and gone > MASS_REMOVAL_SHARE * known:
        return (
            f"{gone} of {known} indexed documents vanished from the inbox at once: not removing them "
            "(unmounted or emptied by mistake?). If the removal is intended, run `colqwen-pipeline ingest "
            "--confirm-removals` or set COLQWEN_ALLOW_MASS_REMOVAL=1"
        )
    return None
