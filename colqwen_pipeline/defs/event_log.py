"""Dagster's SQLite event log with one engine per file, kept open (issue 29).

Dagster's ``SqliteEventLogStorage`` builds a new engine for every event it stores, often two (the
run's shard and the cross-run ``index.db``), opens a connection, commits it with a full fsync, and
closes it; the last connection to close a WAL database checkpoints it. An ingest writes about 11
events a document, and at 15-25 ms an event Dagster's bookkeeping cost several times the rendering.

This storage writes the same rows to the same files: an instance's history stays readable by the
default storage and the other way round. It changes only how the files are opened:

- one engine per file, cached (the index plus the latest run shards), whose pooled connections stay
  open: no engine build, no checkpoint on every event;
- ``PRAGMA synchronous=NORMAL`` on those connections: in WAL mode a commit no longer waits for an
  fsync. A crash of the process loses nothing; a power cut may lose the last commits, and never
  corrupts a file. SQLite still checkpoints the WAL every 1,000 pages.

Configured in dagster.yaml (``event_log_storage``); a deployment on Postgres does not use it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

RUN_SHARDS_KEPT = 8  # run shard engines kept open; a run writes its own, the webserver reads a few


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps its engines. Without ``base_dir`` it lives where Dagster's
    default storage keeps the event log, under the instance's root: ``history/runs``."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # shard -> engine, latest used last
        self._inst_data = inst_data
        if base_dir is not None:
            super().__init__(base_dir, inst_data)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        # The instance registers its storages first thing, before any use; only then is its root known.
        if not hasattr(self, "_base_dir"):
            super().__init__(os.path.join(instance.root_directory, "history", "runs"), self._inst_data)
        super().register_instance(instance)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:  # as Dagster's: one statement batch at a time in this process
            engine = self._engine(shard)
            with engine.connect() as connection, connection.begin():
                yield connection

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
            event.listen(engine, "connect", _no_fsync_per_commit)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        run_shards = [name for name in self._engines if name != "index"]
        for name in run_shards[:-RUN_SHARDS_KEPT]:
            self._engines.pop(name).dispose()
        return engine

    def wipe(self) -> None:  # deletes run shard files: their engines would write to unlinked files
        with self._db_lock:
            self._dispose_engines()
        super().wipe()

    def dispose(self) -> None:
        with self._db_lock:
            self._dispose_engines()
        super().dispose()

    def _dispose_engines(self) -> None:
        while self._engines:
            self._engines.popitem()[1].dispose()


def _no_fsync_per_commit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
