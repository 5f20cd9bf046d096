"""The project's Dagster event log (defs/event_log.py): the same files as Dagster's default SQLite
storage, each kept open with its engine, and committed without an fsync per event."""

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

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

    def counted(url: str, **options):
        built.append(Path(str(url)).name)
        return real_create_engine(url, **options)

    def has_column(storage, connection, column_name: str) -> bool:
        inspected.append(column_name)
        return real_has_column(storage, connection, column_name)

    monkeypatch.setattr(event_log, "create_engine", counted)
    monkeypatch.setattr(SqlEventLogStorage, "_has_asset_key_col_on_connection", has_column)
    runs = home / "history" / "runs"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _materialize(instance, "a")  # the first run creates the shard files
        built.clear()
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
