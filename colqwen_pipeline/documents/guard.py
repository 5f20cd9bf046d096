"""Running render workers as guarded subprocesses: memory cap, shared deadline, whole-group kill.

Each worker gets RLIMIT_AS (address space) so a runaway renderer fails inside the worker instead of
eating the machine, and its own session so that a timeout kills the worker *and* anything it
spawned (pdftoppm, soffice) with one killpg.

Workers are long-lived (``WorkerPool``): starting an interpreter and importing the renderers cost
more than rendering a one-page document, so a worker takes job after job. It keeps every guard of
a worker per job: the cap is the process's own, the deadline is the job's, and a worker whose job
failed, timed out or crashed is killed, never reused: the next job gets a fresh one. A worker is
also replaced after RECYCLE_AFTER_JOBS jobs, or once its resident memory passes RECYCLE_ABOVE of
its cap, so what a renderer leaks never reaches an innocent document.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from colqwen_pipeline.documents.failures import FailureCode, RenderError

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds colqwen_pipeline/
WORKER_MODULE = "colqwen_pipeline.documents.worker"
RECYCLE_AFTER_JOBS = 200
RECYCLE_ABOVE = 0.5  # of the memory cap: leave a renderer's leaks no room to fail a later document
MAX_IDLE_WORKERS = 8  # per memory cap; a worker idles at ~40 MB


# The one render exception under the name the parent side has always used (office.py imports it).
WorkerError = RenderError


def start_capped(command: list[str], memory_mb: int, **popen: Any) -> subprocess.Popen:
    """Start ``command`` with its address space capped (its own children inherit the cap). The cap
    is set by util-linux's ``prlimit`` as it execs the command, not by a ``preexec_fn``: Python
    code between fork and exec, in a process with threads (the render pool, torch), now and then
    crashed the child (a segfault seen in CI). Without ``prlimit``, the cap is set a moment after
    the start (the worker reads its job only after that)."""
    cap = memory_mb * 1024 * 1024
    binary = shutil.which("prlimit")
    if binary:
        return subprocess.Popen([binary, f"--as={cap}", "--", *command], **popen)
    proc = subprocess.Popen(command, **popen)
    with contextlib.suppress(ProcessLookupError):
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (cap, cap))
    return proc


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    env["MALLOC_ARENA_MAX"] = "2"  # fewer 64 MB malloc arenas reserved against RLIMIT_AS
    # Buffers up to 32 MiB (an A4 page at 300 DPI in RGB is 26 MB) are reused from the heap, page after
    # page; larger ones are unmapped when freed, so a huge page does not stay in the worker. At 8 MiB,
    # every page's bitmaps were fresh mappings: page faults cost ~30 ms of a one-page PDF's ~90 ms.
    env["MALLOC_MMAP_THRESHOLD_"] = str(32 * 2**20)
    return env


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass(eq=False)
class Worker:
    """One long-lived worker process and where its stderr goes (a file: a chatty renderer never blocks)."""

    proc: subprocess.Popen
    stderr: IO[bytes]
    kind: tuple[int, int]  # (memory cap, environment): a worker serves only jobs started under both
    jobs: int = 0
    stderr_from: int = 0  # where the current job's stderr starts
    buffer: bytes = b""
    done: bool = False

    def send(self, job: dict[str, Any]) -> None:
        self.jobs += 1
        self.done, self.buffer = False, b""
        self.stderr_from = os.fstat(self.stderr.fileno()).st_size
        assert self.proc.stdin is not None  # started with stdin=PIPE
        with contextlib.suppress(BrokenPipeError):  # a worker that died is reported by _finish
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()

    def resident_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stderr_tail(self) -> list[str]:
        self.stderr.seek(self.stderr_from)
        return self.stderr.read().decode(errors="replace").strip().splitlines()

    def kill(self) -> None:
        kill_group(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


@dataclass
class WorkerPool:
    """Idle workers by memory cap and environment (PATH says which renderers exist), shared by the threads
    of a process (the engine's render pool)."""

    recycle_after: int = RECYCLE_AFTER_JOBS
    max_idle: int = MAX_IDLE_WORKERS
    started: int = 0  # workers started so far (tests: reuse, and recovery after a failure)
    busy: set[Worker] = field(default_factory=set)
    _idle: dict[tuple[int, int], list[Worker]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pid: int = field(default_factory=os.getpid)

    def take(self, memory_mb: int) -> Worker:
        env = worker_env()
        kind = (memory_mb, hash(frozenset(env.items())))
        with self._lock:
            if self._pid != os.getpid():  # a forked child: its parent's workers are not its own
                self._idle, self.busy, self._pid = {}, set(), os.getpid()
            idle = self._idle.get(kind, [])
            worker = idle.pop() if idle else None
        if worker is not None and worker.proc.poll() is not None:  # died while idle (killed from outside)
            worker.kill()
            worker = None
        worker = worker or _spawn(kind, env)
        with self._lock:
            self.started += worker.jobs == 0
            self.busy.add(worker)
        return worker

    def give_back(self, worker: Worker, healthy: bool) -> None:
        """Keep a worker whose job completed, unless it is spent; kill any other."""
        spent = worker.jobs >= self.recycle_after or worker.resident_mb() > worker.kind[0] * RECYCLE_ABOVE
        with self._lock:
            self.busy.discard(worker)
            idle = self._idle.setdefault(worker.kind, [])
            keep = healthy and not spent and len(idle) < self.max_idle and self._pid == os.getpid()
            if keep:
                idle.append(worker)
        if not keep:
            worker.kill()

    def close(self) -> None:
        with self._lock:
            workers = [w for idle in self._idle.values() for w in idle]
            self._idle = {}
        for worker in workers:
            worker.kill()


POOL = WorkerPool()
atexit.register(POOL.close)


def run_workers(
    jobs: list[dict[str, Any]],
    memory_mb: int,
    deadline: float,
    on_line: Callable[[dict[str, Any]], None],
    pool: WorkerPool = POOL,
) -> None:
    """Run each job on a worker of ``pool``, concurrently; call on_line for every record; raise RenderError
    on failure. The first failing worker stops the others: a document renders completely or not at all."""
    workers = [pool.take(memory_mb) for _ in jobs]
    try:
        for worker, job in zip(workers, jobs, strict=True):
            worker.send(job)
        _pump(workers, deadline, on_line)
    finally:
        for worker in workers:
            pool.give_back(worker, healthy=worker.done)


def _spawn(kind: tuple[int, int], env: dict[str, str]) -> Worker:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Worker.kill
    proc = start_capped(
        [sys.executable, "-m", WORKER_MODULE],
        kind[0],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )
    return Worker(proc, stderr, kind)


def _pump(workers: list[Worker], deadline: float, on_line: Callable[[dict[str, Any]], None]) -> None:
    """Read every worker's records until each says its job is done."""
    sel = selectors.DefaultSelector()
    for worker in workers:
        assert worker.proc.stdout is not None  # started with stdout=PIPE
        sel.register(worker.proc.stdout, selectors.EVENT_READ, worker)
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RenderError(FailureCode.TIMEOUT, "time limit")
            for key, _ in sel.select(timeout=min(remaining, 1.0)):
                worker = key.data
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    _finish(worker, deadline)
                    continue
                *lines, worker.buffer = (worker.buffer + chunk).split(b"\n")
                for line in lines:
                    _dispatch(line, worker, on_line)
                if worker.done:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()


def _dispatch(line: bytes, worker: Worker, on_line: Callable[[dict[str, Any]], None]) -> None:
    try:
        obj = json.loads(line)
    except ValueError:
        return  # not ours: the worker routes stray prints to stderr, but be tolerant anyway
    if "error" in obj:
        raise RenderError(obj["error"], obj["message"])
    if obj.get("done"):
        worker.done = True
        return
    on_line(obj)


def _finish(worker: Worker, deadline: float) -> None:
    """The worker closed stdout before its job was done: it died. Its exit status says how."""
    proc = worker.proc
    try:
        rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RenderError(FailureCode.TIMEOUT, "time limit") from None
    if worker.buffer.strip():
        _dispatch(worker.buffer, worker, lambda _: None)
    tail = worker.stderr_tail()
    if rc < 0 or any("MemoryError" in line for line in tail[-3:]):
        raise RenderError(FailureCode.MEMORY, f"killed by signal {-rc}" if rc < 0 else "out of memory")
    raise RenderError(FailureCode.OPEN, f"worker exited {rc}: {tail[-1] if tail else 'no output'}")
