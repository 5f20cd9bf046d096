"""Running render workers as guarded subprocesses: memory cap, shared deadline, whole-group kill.

Each worker gets RLIMIT_AS (address space) so a runaway renderer fails inside the worker instead of
eating the machine, and its own session so that a timeout kills the worker *and* anything it
spawned (pdftoppm, soffice) with one killpg.
"""

from __future__ import annotations

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from colqwen_pipeline.documents.failures import FailureCode, RenderError

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds colqwen_pipeline/
WORKER_MODULE = "colqwen_pipeline.documents.worker"


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
    return env


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_workers(
    jobs: list[dict[str, Any]], memory_mb: int, deadline: float, on_line: Callable[[dict[str, Any]], None]
) -> None:
    """Run one worker per job concurrently; call on_line for every record; raise RenderError on failure.

    The first failing worker stops the others: a document renders completely or not at all.
    """
    procs = [_spawn(job, memory_mb) for job in jobs]
    try:
        _pump(procs, deadline, on_line)
    finally:
        for proc, stderr in procs:
            kill_group(proc)
            proc.stdout.close()
            stderr.close()


def _spawn(job: dict[str, Any], memory_mb: int) -> tuple[subprocess.Popen, IO[bytes]]:
    # A file, not a pipe: a chatty renderer can never block on it. Closed by run_workers.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    proc = start_capped(
        [sys.executable, "-m", WORKER_MODULE],
        memory_mb,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=worker_env(),
        start_new_session=True,
    )
    with contextlib.suppress(BrokenPipeError):  # a worker that died at once is reported by _finish
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
    return proc, stderr


def _pump(
    procs: list[tuple[subprocess.Popen, IO[bytes]]],
    deadline: float,
    on_line: Callable[[dict[str, Any]], None],
) -> None:
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    for i, (proc, _) in enumerate(procs):
        sel.register(proc.stdout, selectors.EVENT_READ, i)
        buffers[i] = b""
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RenderError(FailureCode.TIMEOUT, "time limit")
        for key, _ in sel.select(timeout=min(remaining, 1.0)):
            i = key.data
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                _finish(procs[i], buffers[i], deadline)
                continue
            *lines, buffers[i] = (buffers[i] + chunk).split(b"\n")
            for line in lines:
                _dispatch(line, on_line)


def _dispatch(line: bytes, on_line: Callable[[dict[str, Any]], None]) -> None:
    try:
        obj = json.loads(line)
    except ValueError:
        return  # not ours: the worker routes stray prints to stderr, but be tolerant anyway
    if "error" in obj:
        raise RenderError(obj["error"], obj["message"])
    on_line(obj)


def _finish(entry: tuple[subprocess.Popen, IO[bytes]], rest: bytes, deadline: float) -> None:
    """The worker closed stdout: collect its exit status and turn a bad one into a RenderError."""
    proc, stderr = entry
    try:
        rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RenderError(FailureCode.TIMEOUT, "time limit") from None
    if rest.strip():
        _dispatch(rest, lambda _: None)
    if rc == 0:
        return
    stderr.seek(0)
    tail = stderr.read().decode(errors="replace").strip().splitlines()
    if rc < 0 or any("MemoryError" in line for line in tail[-3:]):
        raise RenderError(FailureCode.MEMORY, f"killed by signal {-rc}" if rc < 0 else "out of memory")
    raise RenderError(FailureCode.OPEN, f"worker exited {rc}: {tail[-1] if tail else 'no output'}")
