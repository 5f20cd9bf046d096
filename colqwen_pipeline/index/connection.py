"""Milvus connections: one client per URI per process, shared by its threads, and processes taking
turns at a Milvus Lite file in the order they arrived.

A Lite file admits one process at a time (the in-process server pymilvus starts for it holds an
exclusive flock on the data folder). Polling for that lock starved a writer behind a busy
searcher that reopened the file between requests (issue 20: a one-document ingest waited 297 s
behind four ``/search`` clients), and two threads of one process opening it at once raced each
other's server. So:

- the threads of a process share one client; the last one out closes it (and frees the file);
- processes queue for a Lite file with ticket files in ``<file>.queue/``, each flocked by its
  living owner, so the ticket of a killed process is swept by whoever looks next;
- a process holding the file admits no new thread while another process waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colqwen_pipeline.index import lite_server

POLL_S = 0.02


class LiteBusy(TimeoutError):
    """Waited the whole allowance for a Lite file another process holds."""


@dataclass
class Ticket:
    """A place in a Lite file's queue: a file named by arrival time, flocked while its owner lives."""

    path: Path
    fd: int


class TurnQueue:
    """First come, first served across processes, for one Lite file."""

    def __init__(self, lite_file: Path):
        self.folder = lite_file.with_name(lite_file.name + ".queue")

    def enter(self) -> Ticket:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}.{os.getpid()}.{secrets.token_hex(4)}"
        draft = self.folder / f".{name}"
        fd = os.open(draft, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        draft.rename(self.folder / name)  # visible only once locked: never swept as dead
        return Ticket(self.folder / name, fd)

    def leave(self, ticket: Ticket) -> None:
        ticket.path.unlink(missing_ok=True)
        os.close(ticket.fd)

    def wait_turn(self, ticket: Ticket, deadline: float) -> None:
        """Return once no living ticket is older than ``ticket``; raise LiteBusy at ``deadline``."""
        while (ahead := [t for t in self.living() if t < ticket.path.name]) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if ahead:
            raise LiteBusy(f"process {ahead[0].split('.')[1]} holds it")

    def others_waiting(self, ticket: Ticket) -> bool:
        return any(name != ticket.path.name for name in self.living())

    def living(self) -> list[str]:
        """Ticket names in arrival order, after removing those whose owner has died."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if not n.startswith("."))
        except FileNotFoundError:
            return []
        return [name for name in names if self._alive(self.folder / name)]

    @staticmethod
    def _alive(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # its owner holds it (flock is per open file: this holds for our own threads too)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # we got the lock: the owner is gone
        return False


@dataclass
class _Shared:
    client: Any = None
    users: int = 0
    opening: bool = False
    ticket: Ticket | None = None
    queue: TurnQueue | None = None
    loaded: set[str] = field(default_factory=set)


_shared: dict[str, _Shared] = {}
_changed = threading.Condition()
_loading = threading.Lock()


@contextlib.contextmanager
def shared_client(key: str, connect: Callable[[], Any], lite_file: Path | None, wait_s: float) -> Iterator[Any]:
    """This process's client for ``key``: ``connect()`` makes it for the first user, and the last
    user closes it. ``lite_file`` (None for a server) makes processes take turns at that file."""
    client = _join(key, connect, lite_file, time.monotonic() + wait_s)
    try:
        yield client
    finally:
        _leave(key)


def load_once(client: Any, name: str) -> None:
    """Load a collection (a reopened Lite file starts released), once per shared Lite client; a
    server's collections can be released by anyone, so there it asks every time (it is cheap)."""
    with _loading:  # not _changed: a first load takes seconds, and joins must not wait on it
        state = next((s for s in list(_shared.values()) if s.client is client), None)
        if state is not None and state.queue is not None and name in state.loaded:
            return
        client.load_collection(name)
        if state is not None:
            state.loaded.add(name)


def _join(key: str, connect: Callable[[], Any], lite_file: Path | None, deadline: float) -> Any:
    with _changed:
        state = _shared.setdefault(key, _Shared())
        while True:
            if state.client is not None and not _someone_else_waits(state):
                state.users += 1
                return state.client
            if state.client is None and not state.opening:
                state.opening = True
                break
            if time.monotonic() >= deadline:
                raise LiteBusy("another process's turn did not come to an end")
            _changed.wait(timeout=0.1)  # short: a waiting process may die without telling us
    try:
        ticket, client = _open_in_turn(connect, lite_file, deadline)
    except BaseException:
        with _changed:
            state.opening = False
            _changed.notify_all()
        raise
    with _changed:
        state.client, state.ticket, state.opening, state.users = client, ticket, False, 1
        state.queue = TurnQueue(lite_file) if lite_file else None
        state.loaded = set()
        _changed.notify_all()
    return client


def _open_in_turn(connect: Callable[[], Any], lite_file: Path | None, deadline: float) -> tuple[Ticket | None, Any]:
    if lite_file is None:
        return None, connect()
    queue = TurnQueue(lite_file)
    ticket = queue.enter()
    try:
        queue.wait_turn(ticket, deadline)
        return ticket, connect()
    except BaseException:
        queue.leave(ticket)
        raise


def _someone_else_waits(state: _Shared) -> bool:
    return state.queue is not None and state.ticket is not None and state.queue.others_waiting(state.ticket)


def _leave(key: str) -> None:
    with _changed:
        state = _shared[key]
        state.users -= 1
        if state.users == 0:
            client, ticket, queue = state.client, state.ticket, state.queue
            state.client = state.ticket = state.queue = None
            state.loaded = set()
            try:
                _close(client, key if queue else None)
            finally:
                if queue and ticket:
                    queue.leave(ticket)
        _changed.notify_all()


def _close(client: Any, lite_key: str | None) -> None:
    client.close()
    if lite_key is not None:  # closing the client leaves this process's Lite server holding the file
        lite_server.stop(Path(lite_key))
