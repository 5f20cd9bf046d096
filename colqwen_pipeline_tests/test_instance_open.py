"""A fresh Dagster instance opened by several threads at once (a DELETE beside a document listing in
`serve`, two CLI ingests): each opening succeeds and the storage is stamped once. Without the lock in
``defs.instance.dagster_instance`` this failed in 2 of 3 runs here (a race: it cannot fail every time)."""

from __future__ import annotations

import sqlite3
import threading


def test_threads_opening_a_fresh_instance_at_once_all_succeed(state, monkeypatch) -> None:
    from colqwen_pipeline.defs.instance import dagster_instance

    state.dagster_home.mkdir(parents=True)
    monkeypatch.setenv("DAGSTER_HOME", str(state.dagster_home))  # a fresh instance, created by the threads below
    errors: list[str] = []
    start = threading.Barrier(16)

    def open_and_read() -> None:
        start.wait()
        try:
            dagster_instance(state).get_runs(limit=1)
        except Exception as error:  # noqa: BLE001 - the test reports every opening that failed
            errors.append(repr(error)[:200])

    threads = [threading.Thread(target=open_and_read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    with sqlite3.connect(state.dagster_home / "history" / "runs.db") as db:
        assert len(db.execute("select version_num from alembic_version").fetchall()) == 1
