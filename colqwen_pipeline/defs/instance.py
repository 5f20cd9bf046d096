"""The Dagster instance of a state directory, and what the rest of the project reads from it.

The only door from outside the Dagster layer (the HTTP server, the CLI's status lines) into Dagster:
the instance itself, the failures recorded per document, the daemon's heartbeat, and an upload's
ingest and removal as Dagster sees them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from colqwen_pipeline.settings import Settings

if TYPE_CHECKING:
    from colqwen_pipeline.defs.runner import IngestSummary

PARTITIONS = "documents"
DAEMON_FRESH_S = 60.0  # Dagster's daemons beat every ~20 s
FAILURE_STAGE_ASSETS = ("raw_documents", "page_images", "page_embeddings", "milvus_collection")


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance under the state directory (DAGSTER_HOME wins when set)."""
    if not os.environ.get("DAGSTER_HOME"):
        home = settings.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        project_yaml = Path(__file__).resolve().parents[2] / "dagster.yaml"
        if project_yaml.exists() and not (home / "dagster.yaml").exists():
            shutil.copy(project_yaml, home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    with opening_instance(Path(os.environ["DAGSTER_HOME"])):
        return dg.DagsterInstance.get()


_OPENING = threading.Lock()


@contextlib.contextmanager
def opening_instance(home: Path) -> Iterator[None]:
    """One opening at a time, across threads and processes: a fresh SQLite storage is created and stamped
    by whoever opens it first, and two at once stamp its alembic table twice ("more than one head"), which
    no later opening survives (seen with a DELETE and a document listing, and with two CLI ingests)."""
    home.mkdir(parents=True, exist_ok=True)
    with _OPENING, (home / ".colqwen-open.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def recorded_failures(instance: dg.DagsterInstance, doc_ids: list[str]) -> dict[str, dict]:
    """doc_id -> the metadata of its latest recorded failure (``cause``, ``source_size``,
    ``source_mtime_ns``, ``context``, ``when``): the observations ``defs/assets`` logs on the stage a
    document did not reach. One query per stage asset and 500 documents."""
    latest: dict[str, dict] = {}
    for asset in FAILURE_STAGE_ASSETS:
        for start in range(0, len(doc_ids), 500):
            chunk = doc_ids[start : start + 500]
            records = instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=chunk), limit=4 * len(chunk)
            ).records
            for record in records:
                observation = record.asset_observation
                if observation is None or observation.partition is None or not observation.description:
                    continue
                if record.timestamp <= latest.get(observation.partition, {}).get("when", 0.0):
                    continue
                meta = {name: value.value for name, value in observation.metadata.items()}
                latest[observation.partition] = meta | {"cause": observation.description, "when": record.timestamp}
    return latest


def failed_since_change(instance: dg.DagsterInstance, files: dict[str, Path]) -> dict[str, str]:
    """doc_id -> cause, for the files whose latest recorded failure is of the file as it is now (same
    size and mtime; for failures recorded without them: newer than the file): a changed file is retried."""
    failed = {}
    for doc_id, failure in recorded_failures(instance, sorted(files)).items():
        try:
            stat = files[doc_id].stat()
        except OSError:
            continue
        if "source_mtime_ns" in failure:
            same = (failure["source_size"], failure["source_mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        else:
            same = failure["when"] >= stat.st_mtime
        if same:
            failed[doc_id] = failure["cause"]
    return failed


def daemon_heartbeat_is_fresh(settings: Settings) -> bool:
    """Has a Dagster daemon of this state directory's instance run its sensors within the last minute?"""
    try:
        beats = dagster_instance(settings).get_daemon_heartbeats()
    except Exception:  # noqa: BLE001 - an unreadable instance: no daemon can be using it either
        return False
    sensor = beats.get("SENSOR")
    return sensor is not None and time.time() - sensor.timestamp < DAEMON_FRESH_S


def ingest_upload(settings: Settings, path: Path) -> IngestSummary:
    """An upload indexed by the server: the CLI's ingest of one file, tagged as the server's run."""
    from colqwen_pipeline.defs.runner import ingest

    return ingest(settings, [str(path)], echo=lambda _: None, trigger="server")


def forget_partition(settings: Settings, doc_id: str) -> None:
    """A removed document leaves Dagster's partitions (and so the UI's lists)."""
    instance = dagster_instance(settings)
    if instance.has_dynamic_partition(PARTITIONS, doc_id):
        instance.delete_dynamic_partition(PARTITIONS, doc_id)


def events_of_last_run(dagster_home: Path) -> int:
    """Events Dagster stored for the instance's last run (planned, materialisations, check evaluations, steps)."""
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        (run,) = instance.get_runs(limit=1)
        return sum(1 for entry in instance.all_logs(run.run_id) if entry.is_dagster_event)
    finally:
        instance.dispose()
