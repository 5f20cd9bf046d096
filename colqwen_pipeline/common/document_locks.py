"""A document's writes and its removal take turns across processes (the server, a CLI ingest, a
Dagster run): an advisory ``flock`` per document under ``<state>/locks/``.

Documents share a fixed set of lock files by a hash of their key (1,024 files, however many
documents come and go: a lock file cannot be deleted safely while another process may wait on
it). Several documents are locked in the order of their lock files, so two holders never wait on
each other. The kernel releases a killed holder's locks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

STRIPES = 1024


def _lock_file(folder: Path, stripe: int) -> Path:
    return folder / f"documents-{stripe:04d}.lock"


def _stripe(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % STRIPES


@contextlib.contextmanager
def document_locks(state_dir: Path, keys: Iterable[str]) -> Iterator[None]:
    """Hold the locks of ``keys`` (blocking until no other process holds one of them). Hold no
    Milvus client while waiting here: the other holder may need it to finish."""
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    descriptors: list[int] = []
    try:
        for stripe in sorted({_stripe(key) for key in keys}):
            descriptors.append(os.open(_lock_file(folder, stripe), os.O_CREAT | os.O_RDWR, 0o600))
            fcntl.flock(descriptors[-1], fcntl.LOCK_EX)
        yield
    finally:
        for descriptor in reversed(descriptors):
            os.close(descriptor)  # releases its flock
