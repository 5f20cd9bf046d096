"""The trash: where a removed document's original goes instead of being deleted.

``$COLQWEN_HOME/trash/<removed-at>-<doc_id>/`` holds the file under its inbox path and ``entry.json``
(doc_id, inbox path, when). The trash is outside the inbox, so to the sensor a trashed file simply
reads as deleted (its rows go; nothing re-ingests it), and a restored one as a new file. Entries older
than COLQWEN_TRASH_DAYS are emptied when something is next removed or restored, and at start-up: the
only place a user's original is ever deleted, and only after that grace time.

A move is a rename where trash and inbox share a file system; elsewhere a copy that is synced before
the source goes, so a crash leaves the file in one place or both, never in neither.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
ENTRY = "entry.json"
DAY_S = 86400


@dataclass(frozen=True)
class Trashed:
    doc_id: str
    document: str  # the path under the inbox it came from and goes back to
    removed_at: float
    folder: Path

    @property
    def file(self) -> Path:
        return self.folder / "file" / self.document

    def purge_at(self, days: float) -> float:
        return self.removed_at + days * DAY_S


class TrashError(Exception):
    """A restore that cannot happen (nothing in the trash, or the name is taken again)."""


class Trash:
    def __init__(self, settings: Settings):
        self.root = settings.home_dir / "trash"
        self.inbox = settings.inbox
        self.days = settings.trash_days

    def put(self, doc_id: str, path: Path) -> Trashed:
        """Move ``path`` (a file of the inbox) into the trash."""
        removed_at = time.time()
        document = path.relative_to(self.inbox).as_posix()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(removed_at))
        folder = self.root / f"{stamp}-{secrets.token_hex(4)}-{doc_id}"  # two removals in one second: two entries
        entry = Trashed(doc_id, document, removed_at, folder)
        entry.file.parent.mkdir(parents=True)
        (folder / ENTRY).write_text(json.dumps({"doc_id": doc_id, "document": document, "removed_at": removed_at}))
        move(path, entry.file)
        log.info("%s moved to the trash (%s)", document, folder.name)
        self.empty_expired()
        return entry

    def entries(self) -> list[Trashed]:
        """Newest first; an entry whose file is gone (restored by hand) is not listed."""
        found = []
        for entry_file in self.root.glob(f"*/{ENTRY}"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                meta = json.loads(entry_file.read_text())
                entry = Trashed(meta["doc_id"], meta["document"], float(meta["removed_at"]), entry_file.parent)
                if entry.file.exists():
                    found.append(entry)
        return sorted(found, key=lambda e: e.removed_at, reverse=True)

    def latest(self, doc_id: str) -> Trashed | None:
        return next((e for e in self.entries() if e.doc_id == doc_id), None)

    def restore(self, doc_id: str) -> Trashed:
        """Move the newest trashed copy of ``doc_id`` back to its inbox path; never over a file there."""
        entry = self.latest(doc_id)
        if entry is None:
            raise TrashError(f"{doc_id} is not in the trash (or it was emptied after {self.days:g} days)")
        target = self.inbox / entry.document
        if target.exists():
            raise TrashError(f"{entry.document} is in the inbox again: rename or remove that file first")
        target.parent.mkdir(parents=True, exist_ok=True)
        move(entry.file, target)
        os.utime(target)  # reads as new to the sensor even if its last look was before the removal
        shutil.rmtree(entry.folder, ignore_errors=True)  # only the now empty entry
        log.info("%s restored from the trash", entry.document)
        self.empty_expired()
        return entry

    def empty_expired(self) -> list[str]:
        """Delete entries older than COLQWEN_TRASH_DAYS; returns their inbox paths."""
        now = time.time()
        expired = [e for e in self.entries() if e.purge_at(self.days) <= now]
        for entry in expired:
            shutil.rmtree(entry.folder, ignore_errors=True)
            log.info("%s emptied from the trash after %g days", entry.document, self.days)
        return [e.document for e in expired]


def move(source: Path, target: Path) -> None:
    """Rename without replacing ``target``; across file systems, copy (synced) then remove the source."""
    try:
        os.link(source, target, follow_symlinks=False)  # fails if target exists: nothing is overwritten
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        _copy_exclusive(source, target)
    source.unlink()  # the file now lives at target


def _copy_exclusive(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    with source.open("rb") as src, open(target, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    shutil.copystat(source, target)
