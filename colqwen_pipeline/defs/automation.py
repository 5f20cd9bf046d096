"""How the pipeline runs by itself: the inbox sensor, the nightly reindex, document removal.

The sensor and the schedule launch ``ingest_job`` over ranges of documents (bulk/runs.py), at
most COLQWEN_MAX_DOCUMENTS_PER_RUN per run, so every path runs the same assets and checks."""

import contextlib
import json
import time

import dagster as dg

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.bulk.indexed import indexed_inbox_state
from colqwen_pipeline.bulk.runs import partition_ranges, range_tags, stable_key
from colqwen_pipeline.bulk.stale_runs import fail_dead_cli_runs
from colqwen_pipeline.defs.assets import documents, failed_since_change, ingest_job
from colqwen_pipeline.defs.resources import ColQwenResource
from colqwen_pipeline.inbox import inbox_files, mass_removal
from colqwen_pipeline.inbox.watch import scan_inbox
from colqwen_pipeline.settings import Settings

HASH_BUDGET_BYTES = 2 << 30  # read per tick at most (~4 s): a tick must end well inside its deadline


class RemoveConfig(dg.Config):
    keys: list[str]


@dg.op
def remove_documents(context: dg.OpExecutionContext, config: RemoveConfig, colqwen: ColQwenResource) -> None:
    """Rows first, then artifacts: a crash in between leaves no rows pointing at missing pages."""
    settings = colqwen.settings()
    for key in config.keys:
        stages.remove_document(settings, key)
        context.log.info(f"removed {key} from the index and the state directory")


@dg.job(description="Remove deleted inbox documents from Milvus and the state directory.")
def remove_documents_job() -> None:
    remove_documents()


@dg.sensor(
    jobs=[ingest_job, remove_documents_job],
    minimum_interval_seconds=Settings().sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def inbox_sensor(context: dg.SensorEvaluationContext, colqwen: ColQwenResource) -> dg.SensorResult:
    """New or changed files -> ingest runs over ranges; deleted files -> removal; half-written files wait."""
    settings = colqwen.settings()
    for run_id in fail_dead_cli_runs(context.instance):  # else they hold the run queue forever
        context.log.warning(f"marked run {run_id} failed: its `colqwen-pipeline ingest` process is gone")
    previous = json.loads(context.cursor) if context.cursor else {}
    seeded = [] if context.cursor else _start_from_the_index(context, settings, previous)
    changes, state = scan_inbox(  # InboxError: the tick fails, cursor kept
        settings.inbox,
        previous,
        settings.settle_s,
        max_file_bytes=settings.max_file_mb * 2**20,
        hash_budget_bytes=HASH_BUDGET_BYTES,
    )
    ordered = context.instance.get_dynamic_partitions(documents.name)
    known = set(ordered)
    refusal = None if settings.allow_mass_removal else mass_removal(len(known), len(changes.deleted))
    if refusal:  # keep the vanished files in the cursor: every tick says so until they return or it is confirmed
        context.log.warning(refusal)
        state |= {key: previous[key] for key in changes.deleted}
        changes.deleted = []
    # New files, and indexed documents this instance has no partition for (so the UI lists them).
    new = list(dict.fromkeys(key for key in [*seeded, *changes.to_ingest] if key not in known))
    ordered = [*ordered, *new]  # the order the partitions have once the add request is applied
    requests = []
    for first, last in partition_ranges(ordered, changes.to_ingest, settings.max_documents_per_run):
        span = ordered[ordered.index(first) : ordered.index(last) + 1]
        versions = [f"{key}@{changes.to_ingest[key]}" for key in span if key in changes.to_ingest]
        requests.append(
            dg.RunRequest(
                job_name=ingest_job.name, run_key=stable_key(*versions), tags=range_tags(first, last, "sensor")
            )
        )
    if changes.deleted:
        config = {"ops": {"remove_documents": {"config": {"keys": changes.deleted}}}}
        run_key = stable_key("remove", *(f"{k}@{previous[k].get('sha256')}" for k in changes.deleted))
        tags = {"colqwen/trigger": "sensor"}
        requests.append(
            dg.RunRequest(job_name=remove_documents_job.name, run_config=config, run_key=run_key, tags=tags)
        )
    if changes.waiting:
        context.log.info(f"waiting for {len(changes.waiting)} file(s) still being written: {changes.waiting[:5]}")
    partition_requests = [
        documents.build_add_request(new),
        documents.build_delete_request([k for k in changes.deleted if k in known]),
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[r for r in partition_requests if r.partition_keys],
        cursor=json.dumps(state, separators=(",", ":")),
    )


def _start_from_the_index(context: dg.SensorEvaluationContext, settings: Settings, state: dict) -> list[str]:
    """First tick (empty cursor): documents already indexed (a CLI ingest, an earlier Dagster home)
    enter the cursor as they were indexed, and documents that failed in a run of this instance since
    they last changed enter it as they are (retried once they change, as after a sensor run's
    failure), so only new or changed files are requested."""
    state.update(indexed_inbox_state(settings))
    indexed, files = len(state), inbox_files(settings.inbox)
    failed = failed_since_change(context.instance, {key: path for key, path in files.items() if key not in state})
    for key in failed:
        with contextlib.suppress(OSError):
            stat = files[key].stat()
            seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            # not hashed (the tick's budget is for new files): any change reads as changed, a deletion as deleted
            state[key] = seen | {"sha256": f"failed-{stat.st_size}-{stat.st_mtime_ns}", "pending": False}
    context.log.info(
        f"first tick: {indexed} document(s) already indexed, {len(state) - indexed} failed since they last "
        "changed; only new or changed files are ingested"
    )
    return list(state)


@dg.schedule(
    name="nightly_reindex",
    job=ingest_job,
    cron_schedule=Settings().reindex_cron,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Bulk reindex (COLQWEN_REINDEX_CRON, default nightly at 02:00): every document whose file, "
    "render settings, model or index changed; the rest cost a stat. Force a full rebuild with the run config "
    "ops.document_pipeline.config.force=true.",
)
def reindex_schedule(context: dg.ScheduleEvaluationContext, colqwen: ColQwenResource) -> list[dg.RunRequest]:
    ordered = context.instance.get_dynamic_partitions(documents.name)
    limit = colqwen.settings().max_documents_per_run
    tick = str(time.time_ns())  # one reindex per tick; a key unique to it (tests have no scheduled time)
    return [
        dg.RunRequest(run_key=stable_key(tick, first, last), tags=range_tags(first, last, "schedule"))
        for first, last in partition_ranges(ordered, ordered, limit)
    ]


JOBS: list = [ingest_job, remove_documents_job]
SENSORS: list = [inbox_sensor]
SCHEDULES: list = [reindex_schedule]
