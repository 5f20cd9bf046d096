"""The long-lived render workers (documents/guard.WorkerPool) keep every guard of a worker per document:
a memory bomb, a hang and a worker killed mid-document each fail only their own document, among good
ones rendered by the same pool, and the pool recovers with fresh workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from colqwen_pipeline.bulk.engine import run_documents
from colqwen_pipeline.documents import DocumentError, rasterize_document
from colqwen_pipeline.documents.guard import POOL, WorkerPool, run_workers
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.test_documents import make_pdf, xobject_bomb


@pytest.mark.parametrize(
    ("hostile", "limits", "cause"),
    [
        (
            (12, 8),
            {"render_memory_mb": 512, "render_timeout_s": 60},
            "renderer exceeded 512 MB of memory (raise COLQWEN_RENDER_MEMORY_MB if you trust the file)",
        ),  # a memory bomb
        (
            (30, 2),
            {"render_timeout_s": 10},
            "renderer exceeded 10 s (raise COLQWEN_RENDER_TIMEOUT_S if you trust the file)",
        ),  # a hang
    ],
    ids=["memory-bomb", "hang"],
)
def test_a_hostile_document_fails_alone_among_good_ones_and_the_pool_recovers(state, hostile, limits, cause) -> None:
    """One run, two render threads sharing the pool: the hostile document between good ones."""
    goods = [make_pdf(state.inbox / f"good-{i}.pdf", pages=1) for i in range(4)]
    bad = xobject_bomb(state.inbox / "bad.pdf", depth=hostile[0], fan=hostile[1])
    order = [goods[0], goods[1], bad, goods[2], goods[3]]
    settings = state.model_copy(update=limits | {"render_workers": 2})
    started_before = POOL.started

    report = run_documents(settings, [document_key(p.name) for p in order], until="pages", say=lambda _: None)

    # 2**29 draws grow the renderer too: on a fast machine the memory cap (4 GB) may stop it before the clock
    causes = {f"bad.pdf: {cause}", "bad.pdf: " + _memory_cause(settings)}
    assert set(report.failed) == {document_key(bad.name)} and report.failed[document_key(bad.name)] in causes
    assert all((settings.pages_dir / document_key(p.name) / "page-0001.png").is_file() for p in goods)
    # 10 jobs (a probe and a draw per document) on fewer workers: reused, and one replaced after the failure
    assert POOL.started - started_before <= 4
    again = rasterize_document(make_pdf(state.inbox / "after.pdf", pages=2), state.home_dir / "after", settings)
    assert len(again.pages) == 2


def test_a_worker_killed_mid_document_fails_only_that_document(state) -> None:
    """A crash: the worker drawing a document dies by a signal; that document fails with one line, and the
    next document is drawn by a fresh worker."""
    slow = xobject_bomb(state.inbox / "slow.pdf", depth=30, fan=2)
    settings = state.model_copy(update={"render_timeout_s": 120})
    outcome: list[BaseException] = []

    def render_slow() -> None:
        try:
            rasterize_document(slow, state.home_dir / "slow", settings)
        except DocumentError as error:
            outcome.append(error)

    thread = threading.Thread(target=render_slow)
    thread.start()
    deadline = time.monotonic() + 60
    while not POOL.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the draw
    victims = [worker.proc.pid for worker in list(POOL.busy)]
    assert victims, "no busy render worker seen"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)

    assert len(outcome) == 1 and str(outcome[0]).startswith("slow.pdf: renderer exceeded")
    assert not (state.home_dir / "slow").exists()
    good = rasterize_document(make_pdf(state.inbox / "good.pdf", pages=1), state.home_dir / "good", settings)
    assert len(good.pages) == 1
    assert not POOL.busy


def test_a_worker_is_reused_then_recycled_after_its_jobs(tmp_path: Path) -> None:
    pool = WorkerPool(recycle_after=3)
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    job = {"op": "probe", "path": str(pdf), "renderer": "pypdfium2", "password": ""}
    started = []
    try:
        for _ in range(7):
            answer: dict = {}
            run_workers([job], 1024, time.monotonic() + 60, answer.update, pool=pool)
            assert len(answer["sizes"]) == 1
            started.append(pool.started)
    finally:
        pool.close()

    assert started == [1, 1, 1, 2, 2, 2, 3]  # three jobs per worker, then a fresh one


@pytest.mark.parametrize("cap_mb", [512, 1024])
def test_a_worker_keeps_its_memory_cap_across_jobs(tmp_path: Path, cap_mb: int) -> None:
    """The cap is the worker process's own (RLIMIT_AS), so it holds for every job it takes."""
    pool = WorkerPool()
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    job = {"op": "probe", "path": str(pdf), "renderer": "pypdfium2", "password": ""}
    try:
        for _ in range(2):
            run_workers([job], cap_mb, time.monotonic() + 60, lambda _: None, pool=pool)
        (worker,) = next(iter(pool._idle.values()))
        limits = Path(f"/proc/{worker.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert int(line.split()[3]) == cap_mb * 2**20 and worker.jobs == 2
    finally:
        pool.close()


def _memory_cause(settings) -> str:
    limit = settings.render_memory_mb
    return f"renderer exceeded {limit} MB of memory (raise COLQWEN_RENDER_MEMORY_MB if you trust the file)"
