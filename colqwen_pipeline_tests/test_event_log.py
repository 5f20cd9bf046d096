"""The project's Dagster event log (defs/event_log.py): the same files as Dagster's default SQLite
storage, each kept open with its engine, and committed without an fsync per event."""

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from sqlalchemy import event
from sqlalchemy.engine import Engine

from colqwen_pipeline.defs import event_log
from colqwen_pipeline.defs.event_log import RUN_SHARDS_KEPT, KeptOpenSqliteEventLogStorage
from colqwen_pipeline.defs.instance import dagster_instance

DEFAULT_STORAGE_YAML = "telemetry:\n  enabled: false\n"


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
def letter(context: dg.AssetExecutionContext) -> str:
    return context.partition_key


def _materialize(instance: dg.DagsterInstance, partition: str) -> str:
    result = dg.materialize([letter], instance=instance, partition_key=partition)
    assert result.success
    return result.run_id


def _latest_partitions(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(letter.key))


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
def shout(letter: str) -> str:
    return letter.upper()


@pytest.fixture
def home(state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's Dagster home (the project's dagster.yaml), with DAGSTER_HOME pointing elsewhere:
    the storage must find its files from the instance it serves, not from the environment."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    dagster_instance(state).dispose()  # copies dagster.yaml into the state directory's Dagster home
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    return state.dagster_home


def test_the_cli_instance_writes_dagsters_default_files_readable_both_ways(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as kept_open:
        assert type(kept_open.event_log_storage) is KeptOpenSqliteEventLogStorage
        _materialize(kept_open, "a")
    assert (home / "history" / "runs" / "index.db").is_file()
    assert not (home.parent / "elsewhere").exists()

    project_yaml = (home / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(DEFAULT_STORAGE_YAML)  # Dagster's own SQLite event log
    with dg.DagsterInstance.from_config(str(home)) as default:
        assert type(default.event_log_storage) is not KeptOpenSqliteEventLogStorage
        assert _latest_partitions(default) == {"a"}
        _materialize(default, "b")

    (home / "dagster.yaml").write_text(project_yaml)
    with dg.DagsterInstance.from_config(str(home)) as kept_open:
        assert _latest_partitions(kept_open) == {"a", "b"}
        assert len(kept_open.get_run_records()) == 2


def test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs(home: Path, monkeypatch) -> None:
    built: list[str] = []
    real_create_engine = event_log.create_engine
    inspected: list[str] = []  # Dagster's look at the asset keys table's columns
    real_has_column = SqlEventLogStorage._has_asset_key_col_on_connection
    looked_up: list[str] = []  # and for tables, each time with an engine of its own
    real_has_table = SqliteEventLogStorage.has_table

    def counted(url: str, **options):
        built.append(Path(str(url)).name)
        return real_create_engine(url, **options)

    def has_column(storage, connection, column_name: str) -> bool:
        inspected.append(column_name)
        return real_has_column(storage, connection, column_name)

    def has_table(storage, table_name: str) -> bool:
        looked_up.append(table_name)
        return real_has_table(storage, table_name)

    monkeypatch.setattr(event_log, "create_engine", counted)
    monkeypatch.setattr(SqlEventLogStorage, "_has_asset_key_col_on_connection", has_column)
    monkeypatch.setattr(SqliteEventLogStorage, "has_table", has_table)
    runs = home / "history" / "runs"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _materialize(instance, "a")  # the first run creates the shard files
        built.clear()
        looked_up.clear()
        run_id = _materialize(instance, "b")
        events = instance.get_records_for_run(run_id).records
        with instance.event_log_storage.run_connection(run_id) as connection:
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
        # Dagster's storage closes the file after every event: the last close checkpoints the WAL
        # into the database and deletes it. Kept open, the WAL holds this run's events.
        wal_bytes = {name: (runs / f"{name}.db-wal").stat().st_size for name in ("index", run_id)}

    assert len(events) >= 10, "a run writes a dozen events or so"
    assert built == [f"{run_id}.db"]  # its own shard, once; index.db's engine was already kept
    assert inspected == ["last_materialization_timestamp"]  # once per process, not per asset event
    assert looked_up == []  # every table it needs was found by the first run
    assert all(size > 0 for size in wal_bytes.values()), wal_bytes
    assert synchronous == 1  # NORMAL: in WAL mode a commit does not fsync


def test_it_keeps_only_the_latest_run_shards_open(home: Path) -> None:
    runs = Path(os.path.realpath(home / "history" / "runs"))

    def open_shards() -> set[str]:  # this instance's event log files this process holds open
        # Only this home's: an instance an earlier test on this worker left to the garbage
        # collector may still hold its own files open.
        targets = {os.path.realpath(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()}
        files = [Path(target) for target in targets if target.endswith(".db")]
        return {file.name for file in files if file.parent == runs}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for number in range(RUN_SHARDS_KEPT + 3):
            _materialize(instance, "ab"[number % 2])
        assert len(instance.get_run_records()) == RUN_SHARDS_KEPT + 3
        run_ids = [record.dagster_run.run_id for record in instance.get_run_records()]  # the latest first
        assert open_shards() == {"index.db"} | {f"{run_id}.db" for run_id in run_ids[:RUN_SHARDS_KEPT]}
    assert open_shards() == set()  # closed with the instance


def test_a_group_of_events_is_one_commit_per_file_or_nothing(home: Path) -> None:
    runs = home / "history" / "runs"
    opened: list[str] = []  # new connections to event log files (the kept idle ones are not SQLAlchemy's)

    def on_connect(dbapi_connection, _record) -> None:
        path = Path(dbapi_connection.execute("PRAGMA database_list").fetchone()[2])
        if path.parent == runs:  # not the run storage's runs.db
            opened.append(path.name)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        _materialize(instance, "a")  # the shard files exist, their engines are kept
        event.listen(Engine, "connect", on_connect)
        try:
            with pytest.raises(RuntimeError), event_log.one_transaction_per_file(instance):
                _materialize(instance, "b")  # a whole run in this thread: a dozen events
                assert _latest_partitions(instance) == {"a", "b"}  # the group reads its own writes
                during = list(opened)
                with dg.DagsterInstance.from_config(str(home)) as webserver:  # another process's view
                    assert _latest_partitions(webserver) == {"a"}  # nothing committed yet
                raise RuntimeError("interrupted")
            assert _latest_partitions(instance) == {"a"}  # all rolled back
            assert during.count("index.db") == 1, during  # the run's new shard: a few more to create it

            opened.clear()
            with event_log.one_transaction_per_file(instance):
                run_id = _materialize(instance, "b")
            assert opened.count("index.db") == 1, opened
            assert _latest_partitions(instance) == {"a", "b"}
            assert len(instance.get_records_for_run(run_id).records) >= 10

            opened.clear()
            _materialize(instance, "a")  # no group: a connection per event, as in Dagster
            assert opened.count("index.db") >= 3  # the planned event, the materialisation, a read or two
        finally:
            event.remove(Engine, "connect", on_connect)


def test_dagster_hands_a_runs_planned_events_over_as_one_batch(home: Path, monkeypatch) -> None:
    monkeypatch.delenv(event_log.EVENT_BATCH_SIZE[0], raising=False)
    batches: list[list[str]] = []
    real_store_event_batch = KeptOpenSqliteEventLogStorage.store_event_batch

    def store_event_batch(storage, events) -> None:
        batches.append([entry.dagster_event_type.value for entry in events])
        real_store_event_batch(storage, events)

    monkeypatch.setattr(KeptOpenSqliteEventLogStorage, "store_event_batch", store_event_batch)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert os.environ[event_log.EVENT_BATCH_SIZE[0]] == event_log.EVENT_BATCH_SIZE[1]
        result = dg.materialize([letter, shout], instance=instance, partition_key="a")
        assert result.success
        assert set(instance.get_materialized_partitions(shout.key)) == {"a"}
    assert batches == [["ASSET_MATERIALIZATION_PLANNED"] * 2]
