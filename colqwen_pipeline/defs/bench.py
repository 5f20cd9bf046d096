"""``colqwen-pipeline bench orchestration``: what Dagster's side costs at a large inbox (issue 25).

A temporary state directory gets ``documents`` small files and, for each, the stamp the engine
leaves once a document is indexed (bulk/stamps.py), so the inbox reads as fully indexed and
unchanged. Nothing is rendered or embedded: planning reads only stats and stamps, so the model's
speed does not enter these figures. Measured on a temporary SQLite Dagster instance:

- ``add_partitions_s``: registering every document as a dynamic partition;
- ``first_tick_s``: the sensor's first tick (no cursor: it plans every document);
- ``sensor_tick_s``: an unchanged tick (the cursor's fingerprint matches);
- ``plan_s``: the nightly schedule's plan of the unchanged inbox, and ``runs`` it launched;
- ``asset_page_s``: the UI's partition-status query of one asset through a real webserver, with
  ``materialized`` of its partitions materialised (written in batches, bench only).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from colqwen_pipeline.settings import Settings

STATUS_QUERY = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } }"""


def bench_orchestration(documents: int, materialized: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="colqwen-bench-orchestration-"))
    saved = dict(os.environ)
    try:
        os.environ |= {
            "COLQWEN_HOME": str(root / "var"),
            "COLQWEN_INBOX": str(root / "inbox"),
            "DAGSTER_HOME": str(root / "dagster"),
        }
        (root / "dagster").mkdir()
        shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", root / "dagster")
        return _measure(Settings(), documents, materialized, root)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def _measure(settings: Settings, documents: int, materialized: int, root: Path) -> dict[str, Any]:
    import dagster as dg

    from colqwen_pipeline.definitions import RESOURCES, defs
    from colqwen_pipeline.defs.automation import inbox_sensor, reindex_schedule

    started = time.perf_counter()
    keys = _indexed_inbox(settings, documents)
    result: dict[str, Any] = {"documents": documents, "state_s": _since(started)}
    with dg.DagsterInstance.get() as instance:
        result["add_partitions_s"] = _timed(lambda: instance.add_dynamic_partitions("documents", keys))
        context = dg.build_sensor_context(instance=instance, definitions=defs, resources=RESOURCES)
        first, result["first_tick_s"] = _timed_value(lambda: inbox_sensor(context))
        again = dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs, resources=RESOURCES)
        tick, result["sensor_tick_s"] = _timed_value(lambda: inbox_sensor(again))
        now = datetime.datetime.now(datetime.UTC)
        schedule = dg.build_schedule_context(instance=instance, resources=RESOURCES, scheduled_execution_time=now)
        planned, result["plan_s"] = _timed_value(lambda: reindex_schedule.evaluate_tick(schedule))
        result["runs"] = len(first.run_requests) + len(tick.run_requests) + len(planned.run_requests or [])
        result["cursor_bytes"] = len(first.cursor or "")
        result["materialized"] = min(materialized, documents)
        result["materialize_s"] = _timed(lambda: _materialize(instance, keys[:materialized]))
    result["asset_page_s"] = _asset_page_s(root)
    result["embedder"] = "none: stamps as the engine writes them (bench only)"
    return result


def _indexed_inbox(settings: Settings, documents: int) -> list[str]:
    """Small distinct files, each with the stamp of a document indexed under the current target."""
    from colqwen_pipeline.bulk.plan import current_target
    from colqwen_pipeline.bulk.stamps import IndexStamp, artifact_stats
    from colqwen_pipeline.inbox import document_key, file_sha256, inbox_files

    target, old = current_target(settings), time.time() - 3600
    for i in range(documents):
        relative = f"batch-{i // 1000:03d}/doc-{i:06d}.png"
        path = settings.inbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(4, "big"))
        os.utime(path, (old, old))
        key, stat, sha = document_key(relative), path.stat(), file_sha256(path)
        directory = settings.embeddings_dir / key
        directory.mkdir(parents=True)
        (directory / "vectors.npy").write_bytes(b"\0" * 256)  # stands in for the vectors: planning stats it
        version = target.document_version(settings, sha)
        IndexStamp(version, 1, stat.st_size, stat.st_mtime_ns, sha, artifact_stats(directory)).write(directory)
    return list(inbox_files(settings.inbox))  # the partitions' order: as the sensor adds them


def _materialize(instance: Any, keys: list[str]) -> None:
    """Materialisations of ``milvus_collection`` for ``keys``, as runless events in batches. Bench
    only: Dagster's public report_runless_asset_event writes one event per call."""
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    for start in range(0, len(keys), 1000):
        entries = [
            EventLogEntry(
                error_info=None,
                level=20,
                user_message="",
                run_id=RUNLESS_RUN_ID,
                timestamp=time.time(),
                dagster_event=DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name=RUNLESS_JOB_NAME,
                    event_specific_data=StepMaterializationData(
                        dg.AssetMaterialization("milvus_collection", partition=key)
                    ),
                ),
            )
            for key in keys[start : start + 1000]
        ]
        instance.event_log_storage.store_event_batch(entries)


def _asset_page_s(root: Path) -> float:
    """The partition statuses of ``milvus_collection`` as the UI's asset page asks for them, from a
    real ``dagster-webserver`` over the bench's instance (the first query: the status cache is cold)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = Path(sys.executable).parent / "dagster-webserver"
    command = [str(binary), "-m", "colqwen_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with (root / "webserver.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_served(port, process)
        return _timed(lambda: _graphql(port, STATUS_QUERY, {"key": {"path": ["milvus_collection"]}}))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 2)
        process.wait(timeout=60)


def _wait_served(port: int, process: subprocess.Popen, timeout_s: float = 180) -> None:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            entries = _graphql(port, query)["workspaceOrError"]["locationEntries"]
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                return
        time.sleep(0.5)
    raise RuntimeError("dagster-webserver did not load the project (see its log in the bench folder)")


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["data"]


def _timed(work) -> float:
    return _timed_value(work)[1]


def _timed_value(work) -> tuple[Any, float]:
    started = time.perf_counter()
    value = work()
    return value, _since(started)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
