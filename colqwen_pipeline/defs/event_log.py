"""Dagster's SQLite event log with one engine per file, kept, and the file kept open (issue 29).

Dagster's ``SqliteEventLogStorage`` builds a new engine for every event it stores, often two (the
run's shard and the cross-run ``index.db``), opens a connection, commits it with a full fsync, and
closes it; the last connection to close a WAL database checkpoints it. An ingest writes about 11
events a document, and at 15-25 ms an event Dagster's bookkeeping cost several times the rendering.

This storage writes the same rows to the same files: an instance's history stays readable by the
default storage and the other way round. It changes only how the files are opened:

- one engine per file, kept (the index plus the latest run shards): no engine build per event;
- one idle connection per kept file, so that an event's connection is never the last to close and
  does not checkpoint. It never begins a transaction, so it holds no lock. Each event still gets a
  connection of its own that is closed after it, as in Dagster's storage (no pool): a step
  interrupted mid-write by a signal leaves nothing open that could keep the write lock;
- ``PRAGMA synchronous=NORMAL`` on those connections: in WAL mode a commit no longer waits for an
  fsync. A crash of the process loses nothing; a power cut may lose the last commits, and never
  corrupts a file. SQLite still checkpoints the WAL every 1,000 pages;
- ``one_transaction_per_file()``: the events a caller writes as one group (a document's, or a
  batch Dagster hands to ``store_event_batch``) share one connection and one transaction per
  file, committed together or not at all. Dagster opens two to five connections per event;
- the tables Dagster looks for before each asset event are looked for once: only a migration
  adds a table, and none removes one.

Configured in dagster.yaml (``event_log_storage``); a deployment on Postgres does not use it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

RUN_SHARDS_KEPT = 8  # run shard files kept open; a run writes its own, the webserver reads a few
# Dagster hands events it knows belong together (a run's planned materialisations and checks, one
# per partition and asset, and a step's outputs over a partition range) to store_event_batch only
# when this is set; otherwise one at a time. The value caps a batch: other writers wait for it.
EVENT_BATCH_SIZE = ("DAGSTER_EVENT_BATCH_SIZE", "500")


class _KeptFile(NamedTuple):
    engine: Engine
    idle: sqlite3.Connection  # holds the file (and its WAL) open between events

    def close(self) -> None:
        self.engine.dispose()
        self.idle.close()


class KeptOpenSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps its engines and files open. Without ``base_dir`` it lives
    where Dagster's default storage keeps the event log, under the instance's root: ``history/runs``."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        self._kept: OrderedDict[str, _KeptFile] = OrderedDict()  # shard -> its engine, latest used last
        self._inst_data = inst_data
        self._asset_key_index_cols = False
        self._tables_present: set[str] = set()
        self._group = threading.local()  # .connections: shard -> the open group's connection
        if base_dir is not None:
            self._open(base_dir)

    def _has_asset_key_index_cols_on_connection(self, connection: Connection) -> bool:
        # Dagster inspects the table's columns for every asset event; only a migration adds them,
        # so once present they stay.
        if not self._asset_key_index_cols:
            self._asset_key_index_cols = super()._has_asset_key_index_cols_on_connection(connection)
        return self._asset_key_index_cols

    def _open(self, base_dir: str) -> None:
        super().__init__(base_dir, self._inst_data)
        # Reentrant: a thread inside an open group that reaches wipe() or dispose() must not wait on itself.
        self._db_lock = threading.RLock()  # type: ignore[assignment]

    def has_table(self, table_name: str) -> bool:
        # Dagster builds an engine and opens index.db for this, before every asset event's tags.
        if table_name not in self._tables_present and super().has_table(table_name):
            self._tables_present.add(table_name)
        return table_name in self._tables_present

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        # The instance registers its storages first thing, before any use; only then is its root known.
        if not hasattr(self, "_base_dir"):
            self._open(os.path.join(instance.root_directory, "history", "runs"))
        os.environ.setdefault(*EVENT_BATCH_SIZE)  # read by Dagster at every event, in this process
        super().register_instance(instance)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> KeptOpenSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        with self.one_transaction_per_file():
            for entry in events:
                self.store_event(entry)

    @contextmanager
    def one_transaction_per_file(self) -> Iterator[None]:
        """Every statement this thread runs inside shares one connection and transaction per file,
        committed on leaving, or all rolled back if it raised (a signal included). Other threads
        wait, as they wait for one event's statements; inside an open group this opens none."""
        if getattr(self._group, "connections", None) is not None:
            yield
            return
        with self._db_lock:
            connections: dict[str, Connection] = {}
            self._group.connections = connections
            try:
                yield
                for connection in connections.values():
                    connection.commit()
            finally:
                self._group.connections = None
                for connection in connections.values():
                    connection.close()  # rolls back what was not committed

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        grouped = getattr(self._group, "connections", None)
        if grouped is not None:
            if shard not in grouped:
                grouped[shard] = self._engine(shard).connect()
                grouped[shard].begin()
            yield grouped[shard]
            return
        with self._db_lock:  # as Dagster's: one statement batch at a time in this process
            engine = self._engine(shard)
            with engine.connect() as connection, connection.begin():
                yield connection

    def _engine(self, shard: str) -> Engine:
        kept = self._kept.pop(shard, None)
        opened = kept is None
        if kept is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            event.listen(engine, "connect", _no_fsync_per_commit)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            kept = _KeptFile(engine, _idle_connection(self.path_for_shard(shard)))
        self._kept[shard] = kept
        if opened:  # only a newly opened file can push the oldest run shard out
            self._close_oldest_run_shards()
        return kept.engine

    def _close_oldest_run_shards(self) -> None:
        run_shards = [name for name in self._kept if name != "index"]  # latest used last
        for name in run_shards[:-RUN_SHARDS_KEPT]:
            self._kept.pop(name).close()

    def wipe(self) -> None:  # deletes run shard files: kept ones would go on writing to unlinked files
        with self._db_lock:
            self._close_kept()
            self._tables_present.clear()
        super().wipe()

    def dispose(self) -> None:
        with self._db_lock:
            self._close_kept()
        super().dispose()

    def _close_kept(self) -> None:
        while self._kept:
            self._kept.popitem()[1].close()


def one_transaction_per_file(instance: dg.DagsterInstance) -> AbstractContextManager[None]:
    """The instance's events written inside as one group (``KeptOpenSqliteEventLogStorage``); with
    any other event log (Postgres), one event at a time as before."""
    storage = instance.event_log_storage
    if isinstance(storage, KeptOpenSqliteEventLogStorage):
        return storage.one_transaction_per_file()
    return nullcontext()


def _idle_connection(path: str) -> sqlite3.Connection:
    """A connection that has read the file once, so it maps the WAL index, and then does nothing."""
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    return connection


def _no_fsync_per_commit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
