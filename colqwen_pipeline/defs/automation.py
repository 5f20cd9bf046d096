"""How the pipeline runs by itself: the inbox sensor, the nightly reindex, document removal.

Both plan before they launch (``bulk.plan``): a ``stat`` per file and the stamp per document say
which documents need work, and only those get runs of ``ingest_job``, over ranges of at most
COLQWEN_MAX_DOCUMENTS_PER_RUN documents (defs/runs.py). The sensor's cursor is a digest of every
file's size and mtime and of the model and index: an unchanged inbox costs a listing and a stat per
file, and launches nothing."""

from collections.abc import Sequence

import dagster as dg

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.bulk.plan import Plan, current_target, fingerprint, inbox_stats, plan_documents
from colqwen_pipeline.defs.assets import documents, ingest_job
from colqwen_pipeline.defs.instance import PARTITIONS, failed_since_change
from colqwen_pipeline.defs.resources import ColQwenResource
from colqwen_pipeline.defs.runs import TRIGGER, keys_in_flight, partition_ranges, range_tags, stable_key
from colqwen_pipeline.defs.stale_runs import clear_dead_runs
from colqwen_pipeline.inbox import inbox_files, mass_removal
from colqwen_pipeline.settings import Settings


class RemoveConfig(dg.Config):
    keys: list[str]


@dg.op
def remove_documents(context: dg.OpExecutionContext, config: RemoveConfig, colqwen: ColQwenResource) -> None:
    """Rows first, then artifacts: a crash in between leaves no rows pointing at missing pages."""
    settings = colqwen.settings()
    for key in config.keys:
        stages.remove_document(settings, key)
        context.log.info(f"removed {key} from the index and the state directory")


@dg.job(
    description="Remove deleted inbox documents from Milvus and the state directory.",
    tags={"colqwen/trigger": "sensor"},
)
def remove_documents_job() -> None:
    remove_documents()


def plan_inbox(
    instance: dg.DagsterInstance, settings: Settings, files: dict, stats: dict, known: Sequence[str]
) -> Plan:
    """The sensor's and the schedule's plan: files written in the last COLQWEN_SETTLE_S wait."""
    return plan_documents(
        settings,
        files,
        current_target(settings),
        known=known,
        failures=lambda candidates: failed_since_change(instance, candidates),
        in_flight=keys_in_flight(instance, known, ingest_job.name),
        stats=stats,
        settle_s=settings.settle_s,
    )


def ingest_requests(plan: Plan, ordered: list[str], stats: dict, settings: Settings, trigger: str, *salt: str):
    """One run request per range of documents that need work; the run key names the files' versions,
    so a tick that sees the same files again asks for nothing new."""
    requests, wanted = [], set(plan.work)
    position = {key: i for i, key in enumerate(ordered)}
    for first, last in partition_ranges(ordered, plan.work, settings.max_documents_per_run, may_span=plan.current):
        span = ordered[position[first] : position[last] + 1]
        versions = [f"{k}@{stats[k].st_size}@{stats[k].st_mtime_ns}" for k in span if k in wanted]
        requests.append(
            dg.RunRequest(
                job_name=ingest_job.name,
                run_key=stable_key(trigger, *salt, *versions),
                tags=range_tags(first, last, trigger),
            )
        )
    return requests


@dg.sensor(
    jobs=[ingest_job, remove_documents_job],
    minimum_interval_seconds=Settings().sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def inbox_sensor(context: dg.SensorEvaluationContext, colqwen: ColQwenResource) -> dg.SensorResult:
    """New or changed files -> ingest runs over ranges; deleted files -> removal; half-written files wait."""
    settings = colqwen.settings()
    for line in clear_dead_runs(context.instance):  # else they hold the run queue or the GPU pool forever
        context.log.warning(line)
    files = inbox_files(settings.inbox)  # InboxError: the tick fails, cursor kept
    stats = inbox_stats(files)
    cursor = fingerprint(stats, current_target(settings).digest(settings))
    if context.cursor == cursor:
        return dg.SensorResult(skip_reason="the inbox, the model and the index are unchanged", cursor=cursor)
    known = context.instance.get_dynamic_partitions(PARTITIONS)
    plan = plan_inbox(context.instance, settings, files, stats, known)
    refusal = None if settings.allow_mass_removal else mass_removal(len(known), len(plan.gone))
    if refusal:  # every tick says so (no cursor) until the files return or the removal is confirmed
        context.log.warning(refusal)
        plan.gone = []
    registered, waiting = set(known), set(plan.waiting)
    new = [key for key in stats if key not in registered and key not in waiting]
    ordered = [*known, *new]  # the order the partitions have once the add request is applied
    requests = ingest_requests(plan, ordered, stats, settings, "sensor")
    if plan.gone:
        config = {"ops": {"remove_documents": {"config": {"keys": plan.gone}}}}
        requests.append(
            dg.RunRequest(
                job_name=remove_documents_job.name,
                run_config=config,
                run_key=stable_key("remove", *plan.gone),
                tags={TRIGGER: "sensor"},
            )
        )
    if plan.waiting:
        context.log.info(f"waiting for {len(plan.waiting)} file(s) still being written: {plan.waiting[:5]}")
    if plan.failed:
        context.log.info(f"{len(plan.failed)} document(s) failed as they are now; retried once they change")
    partition_requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = [
        documents.build_add_request(new),
        documents.build_delete_request(plan.gone),
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[r for r in partition_requests if r.partition_keys],
        cursor="" if plan.waiting or refusal else cursor,  # no cursor: the next tick plans again
    )


@dg.schedule(
    name="nightly_reindex",
    job=ingest_job,
    cron_schedule=Settings().reindex_cron,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Bulk reindex (COLQWEN_REINDEX_CRON, default nightly at 02:00): runs for the documents whose file, "
    "render settings, model or index changed, none for the rest (an unchanged inbox launches nothing). Force a "
    "full rebuild with `colqwen-pipeline ingest --force` or the run config ops.document_pipeline.config.force=true.",
)
def reindex_schedule(context: dg.ScheduleEvaluationContext, colqwen: ColQwenResource):
    settings = colqwen.settings()
    instance = context.instance
    files = inbox_files(settings.inbox)
    stats = inbox_stats(files)
    known = instance.get_dynamic_partitions(PARTITIONS)
    registered = set(known)
    new = [key for key in stats if key not in registered]
    if new:  # a run can target only partitions that exist
        instance.add_dynamic_partitions(PARTITIONS, new)
    ordered = [*known, *new]
    plan = plan_inbox(instance, settings, files, stats, ordered)
    requests = ingest_requests(plan, ordered, stats, settings, "schedule", context.scheduled_execution_time.isoformat())
    if not requests:
        return dg.SkipReason(
            f"nothing to reindex: {len(plan.current)} document(s) current, {len(plan.failed)} failed as they are "
            f"now, {len(plan.in_flight)} in a run, {len(plan.waiting)} still being written"
        )
    return requests


JOBS: list = [ingest_job, remove_documents_job]
SENSORS: list = [inbox_sensor]
SCHEDULES: list = [reindex_schedule]
