"""Documents over HTTP: uploads written into the inbox, their status, removal, and who indexes them.

An upload is streamed to a hidden temporary file in the inbox (the sensor and the CLI skip dot files),
sniffed by the pipeline's own sniffer, then linked to its final name (``os.link`` fails rather than
replace a file: no upload overwrites a document) and the temporary name removed.

Indexing is one of two ``Indexer``s: the Dagster sensor's (when a daemon runs, it finds the new file on
its own) or the server's (a worker thread that runs the same ingest as ``colqwen-pipeline ingest FILE``,
one document at a time). COLQWEN_SERVER_INDEX_UPLOADS chooses: ``always`` the server, ``never`` the sensor,
``auto`` the sensor while a daemon of the same Dagster instance has sent a heartbeat in the last minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from colqwen_pipeline.documents.manifest import DocumentError, Manifest
from colqwen_pipeline.inbox import IGNORED_PREFIXES, document_name, inbox_files
from colqwen_pipeline.service.limits import Refused
from colqwen_pipeline.service.trash import Trash, Trashed, TrashError
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MAX_NAME_CHARS = 120


@dataclass(frozen=True)
class Upload:
    doc_id: str
    document: str  # the file name in the inbox
    indexed_by: str  # "server" or "sensor"


def safe_name(filename: str | None) -> str:
    """A plain file name: no folders, no hidden or lock-file prefix, only unremarkable characters."""
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", filename or ""))[-1]
    cleaned = re.sub(r"[^\w.() -]+", "_", base, flags=re.ASCII).strip(" ._~$")
    while cleaned.startswith(IGNORED_PREFIXES):
        cleaned = cleaned[1:]
    stem, dot, suffix = cleaned.rpartition(".") if "." in cleaned else (cleaned, "", "")
    stem = stem[: MAX_NAME_CHARS - len(suffix) - 1] or "upload"
    return f"{stem}{dot}{suffix[:16]}"


def numbered(name: str, n: int) -> str:
    stem, dot, suffix = name.rpartition(".") if "." in name else (name, "", "")
    return f"{stem}-{n}{dot}{suffix}"


class UploadStore:
    def __init__(self, settings: Settings):
        self.inbox = settings.inbox
        self.max_bytes = settings.server_max_upload_mb * 2**20

    def save(self, source: BinaryIO, filename: str | None) -> str:
        """Write the upload into the inbox; returns its file name (numbered when the name is taken)."""
        if not self.inbox.is_dir():
            raise Refused(503, f"the inbox {self.inbox.name} does not exist on the server (COLQWEN_INBOX)")
        name = safe_name(filename)
        handle, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.inbox)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                self._copy_capped(source, out, name)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)  # mkstemp's 0600 would hide it from a daemon running as another user
            self._sniff(tmp, name)
            return self._link_free_name(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)

    def _copy_capped(self, source: BinaryIO, out: BinaryIO, name: str) -> None:
        written = 0
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > self.max_bytes:
                mb = self.max_bytes // 2**20
                raise Refused(413, f"{name}: larger than {mb} MB (COLQWEN_SERVER_MAX_UPLOAD_MB)")
            out.write(chunk)

    @staticmethod
    def _sniff(path: Path, name: str) -> None:
        from colqwen_pipeline.documents.sniff import sniff

        try:
            sniff(path)
        except DocumentError as error:  # the sniffer names the temporary file: name the upload instead
            raise Refused(415, str(error).replace(path.name, name, 1)) from None

    def _link_free_name(self, tmp: Path, name: str) -> str:
        for n in range(1, 1000):
            candidate = name if n == 1 else numbered(name, n)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.inbox / candidate)  # atomic, and never replaces an existing file
                return candidate
        raise Refused(409, f"{name}: 999 documents of that name are in the inbox already")


class Indexer(ABC):
    """Who brings an uploaded or deleted document into the index."""

    name: str
    failed: dict[str, str]  # doc_id -> one-line reason (of the indexing this server saw)

    @abstractmethod
    def submit(self, doc_id: str, path: Path) -> str:
        """Arrange for the document to be indexed; returns who does it ("server" or "sensor")."""

    def indexing(self) -> str | None:
        """The doc_id being indexed right now, if this process does it."""
        return None


class SensorIndexer(Indexer):
    """A Dagster daemon's inbox sensor indexes the file once it has settled; nothing to do here."""

    name = "sensor"

    def __init__(self) -> None:
        self.failed = {}

    def submit(self, doc_id: str, path: Path) -> str:
        return self.name


class ServerIndexer(Indexer):
    """One worker thread runs the CLI's ingest for each submitted document, in order. It shares the
    server's model (one load per process) and holds ``lock`` while it writes, as removals do."""

    name = "server"

    def __init__(self, settings: Settings, lock: threading.Lock, on_indexed: Callable[[], None]):
        self.settings, self.lock, self.on_indexed = settings, lock, on_indexed
        self.failed: dict[str, str] = {}
        self._queue: queue.Queue[tuple[str, Path]] = queue.Queue()
        self._current: str | None = None
        threading.Thread(target=self._work, name="upload-indexer", daemon=True).start()

    def submit(self, doc_id: str, path: Path) -> str:
        self.failed.pop(doc_id, None)
        self._queue.put((doc_id, path))
        return self.name

    def indexing(self) -> str | None:
        return self._current

    def _work(self) -> None:
        while True:
            doc_id, path = self._queue.get()
            self._current = doc_id
            try:
                self._ingest(doc_id, path)
            finally:
                self._current = None
                self.on_indexed()

    def _ingest(self, doc_id: str, path: Path) -> None:
        from colqwen_pipeline.defs.instance import ingest_upload

        if not path.exists():  # deleted before its turn
            return
        started = time.perf_counter()
        try:
            with self.lock:
                summary = ingest_upload(self.settings, path)
        except Exception as error:  # one document's failure must not stop the worker
            log.warning("indexing %s failed: %s", path.name, error)
            self.failed[doc_id] = one_line(error)
            return
        if doc_id in summary.failed:
            self.failed[doc_id] = summary.failed[doc_id]
            log.warning("indexing %s failed: %s", path.name, summary.failed[doc_id])
        else:
            log.info("indexed upload %s: %d page(s) in %.1f s", path.name, summary.pages, time.perf_counter() - started)


class AutoIndexer(Indexer):
    """The sensor's while a daemon is alive, else the server's; decided per upload."""

    name = "auto"

    def __init__(self, server: ServerIndexer, daemon_alive: Callable[[], bool]):
        self.server, self.sensor, self.daemon_alive = server, SensorIndexer(), daemon_alive
        self.failed = server.failed

    def submit(self, doc_id: str, path: Path) -> str:
        return (self.sensor if self.daemon_alive() else self.server).submit(doc_id, path)

    def indexing(self) -> str | None:
        return self.server.indexing()


def make_indexer(settings: Settings, lock: threading.Lock, on_indexed: Callable[[], None]) -> Indexer:
    if settings.server_index_uploads == "never":
        return SensorIndexer()
    server = ServerIndexer(settings, lock, on_indexed)
    if settings.server_index_uploads == "always":
        return server
    from colqwen_pipeline.defs.instance import daemon_heartbeat_is_fresh

    return AutoIndexer(server, lambda: daemon_heartbeat_is_fresh(settings))


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def document_statuses(settings: Settings, indexed: set[str], indexer: Indexer) -> list[dict[str, Any]]:
    """Every inbox document: pending, indexed (with its page count) or failed (with the reason: of
    this server's indexing, or of a Dagster run since the file last changed)."""
    files = inbox_files(settings.inbox)
    failed = dict(indexer.failed)
    waiting = {doc_id: path for doc_id, path in files.items() if doc_id not in failed and doc_id not in indexed}
    failed |= failed_in_runs(settings, waiting)
    statuses = []
    for doc_id, path in files.items():
        entry: dict[str, Any] = {"doc_id": doc_id, "document": document_name(settings.inbox, path)}
        if doc_id in failed:
            entry |= {"status": "failed", "reason": failed[doc_id]}
        elif doc_id in indexed:
            entry |= {"status": "indexed", "pages": page_count(settings, doc_id)}
        else:
            entry |= {"status": "pending"} | ({"detail": "indexing"} if indexer.indexing() == doc_id else {})
        statuses.append(entry)
    return statuses


def failed_in_runs(settings: Settings, waiting: dict[str, Path]) -> dict[str, str]:
    """doc_id -> cause, for documents that failed in a Dagster run since their file last changed."""
    if not waiting:
        return {}
    from colqwen_pipeline.defs.instance import dagster_instance, failed_since_change

    try:
        return failed_since_change(dagster_instance(settings), waiting)
    except Exception as error:  # noqa: BLE001 - an unreadable instance: the list shows them pending
        log.warning("cannot read run failures from the Dagster instance: %s", one_line(error))
        return {}


def page_count(settings: Settings, doc_id: str) -> int | None:
    try:
        return len(Manifest.read(settings.pages_dir / doc_id).pages)
    except (OSError, ValueError, KeyError, TypeError):
        return None


REMOVE_WAIT_S = 10.0  # a removal waits this long for an upload's ingest to finish, then answers busy
REMOVE_WAITERS = 4  # requests waiting for their turn at once; a waiting request holds a worker thread


class WriteTurns:
    """The server's writes take turns: an upload's ingest, a removal, a restore. A request waits at most
    ``wait_s`` for its turn, and at most ``waiters`` wait at once, so waiting requests cannot take every
    worker thread from search and the page; the rest are answered busy at once."""

    def __init__(self, wait_s: float = REMOVE_WAIT_S, waiters: int = REMOVE_WAITERS):
        self.lock = threading.Lock()
        self.wait_s = wait_s
        self._waiting = threading.BoundedSemaphore(waiters)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if not self._waiting.acquire(blocking=False):
            raise busy()
        try:
            got = self.lock.acquire(timeout=self.wait_s)
        finally:
            self._waiting.release()
        if not got:
            raise busy()
        try:
            yield
        finally:
            self.lock.release()


def busy() -> Refused:
    return Refused(
        503,
        "busy: the index is being written (an upload being indexed, or another removal); try again in a minute",
        {"Retry-After": "10"},
    )


def remove_document(settings: Settings, doc_id: str, turns: WriteTurns, trash: Trash) -> Trashed | None:
    """The original into the trash, the document out of the index, the state directory and Dagster's
    partitions. Returns the trash entry (None when only index rows were left). 404 unless the doc_id is a
    document of the inbox or the index."""
    from colqwen_pipeline.bulk import stages
    from colqwen_pipeline.defs.instance import forget_partition

    with turns.turn():
        path = inbox_files(settings.inbox).get(doc_id)
        index = stages.make_index(settings)
        if path is None and doc_id not in index.document_ids():
            raise Refused(404, f"no document {doc_id!r} in the inbox or the index")
        trashed = trash.put(doc_id, path) if path is not None else None  # first: a sensor sees a deletion
        stages.remove_document(settings, doc_id, index)  # the same removal the sensor makes for a deleted file
        forget_partition(settings, doc_id)
    return trashed


def restore_document(doc_id: str, turns: WriteTurns, trash: Trash) -> Trashed:
    with turns.turn():
        try:
            return trash.restore(doc_id)
        except TrashError as error:
            raise Refused(409 if trash.latest(doc_id) else 404, str(error)) from None
