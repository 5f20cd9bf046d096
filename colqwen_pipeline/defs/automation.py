"""How the pipeline runs by itself: the inbox sensor, the nightly reindex, and their jobs."""

import json

import dagster as dg

from colqwen_pipeline import stages
from colqwen_pipeline.defs.assets import documents, ingest_job
from colqwen_pipeline.defs.resources import ColQwenModel
from colqwen_pipeline.inbox import mass_removal
from colqwen_pipeline.inbox_watch import scan_inbox
from colqwen_pipeline.reindex import reindex_all
from colqwen_pipeline.settings import Settings


class RemoveConfig(dg.Config):
    keys: list[str]


@dg.op
def remove_documents(context: dg.OpExecutionContext, config: RemoveConfig) -> None:
    """Rows first, then artifacts: a crash in between leaves no rows pointing at missing pages."""
    settings = Settings()
    for key in config.keys:
        stages.remove_document(settings, key)
        context.log.info(f"removed {key} from the index and the state directory")


@dg.job(description="Remove deleted inbox documents from Milvus and the state directory.")
def remove_documents_job() -> None:
    remove_documents()


@dg.op(pool="gpu")
def reindex_documents(context: dg.OpExecutionContext, model: ColQwenModel):
    """Every inbox document in this one process: one model load, unchanged pages from the cache.

    Materialisations are yielded (not ``log_event``-ed) so they are recorded even when a broken
    document fails the step at the end."""
    settings = model.settings()
    known = set(context.instance.get_dynamic_partitions(documents.name))
    failed = []
    for outcome in reindex_all(settings, say=context.log.info):
        if outcome.key not in known:
            context.instance.add_dynamic_partitions(documents.name, [outcome.key])
        if not outcome.ok:
            context.log.error(outcome.error)
            failed.append(outcome.error)
            continue
        for asset in ("page_images", "page_embeddings", "milvus_collection"):
            metadata = {"pages": outcome.pages, "tokens": outcome.tokens} | _plain(outcome.metrics)
            yield dg.AssetMaterialization(asset, partition=outcome.key, metadata=metadata)
    if failed:
        raise dg.Failure(description=f"{len(failed)} document(s) failed; the others are indexed: " + "; ".join(failed))
    yield dg.Output(None)


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


@dg.job(description="Re-embed and re-index every inbox document in one run (one model load).")
def reindex_job() -> None:
    reindex_documents()


@dg.sensor(
    jobs=[ingest_job, remove_documents_job],
    minimum_interval_seconds=Settings().sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """New or changed files -> ingest runs; deleted files -> removal; half-written files wait."""
    settings = Settings()
    previous = json.loads(context.cursor) if context.cursor else {}
    changes, state = scan_inbox(settings.inbox, previous, settings.settle_s)  # InboxError: the tick fails, cursor kept
    known = set(context.instance.get_dynamic_partitions(documents.name))
    refusal = None if settings.allow_mass_removal else mass_removal(len(known), len(changes.deleted))
    if refusal:  # keep the vanished files in the cursor: every tick says so until they return or it is confirmed
        context.log.warning(refusal)
        state |= {key: previous[key] for key in changes.deleted}
        changes.deleted = []
    requests = [
        dg.RunRequest(
            job_name=ingest_job.name,
            partition_key=key,
            run_key=f"{key}@{sha[:16]}@{state[key]['mtime_ns']}",
            tags={"colqwen/trigger": "inbox_sensor"},
        )
        for key, sha in changes.to_ingest.items()
    ]
    if changes.deleted:
        config = {"ops": {"remove_documents": {"config": {"keys": changes.deleted}}}}
        run_key = "remove:" + ",".join(changes.deleted) + f"@{context.cursor and hash(context.cursor)}"
        requests.append(dg.RunRequest(job_name=remove_documents_job.name, run_config=config, run_key=run_key))
    if changes.waiting:
        context.log.info(f"waiting for {len(changes.waiting)} file(s) still being written: {changes.waiting[:5]}")
    partition_requests = [
        documents.build_add_request([k for k in changes.to_ingest if k not in known]),
        documents.build_delete_request([k for k in changes.deleted if k in known]),
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[r for r in partition_requests if r.partition_keys],
        cursor=json.dumps(state, separators=(",", ":")),
    )


reindex_schedule = dg.ScheduleDefinition(
    name="nightly_reindex",
    job=reindex_job,
    cron_schedule=Settings().reindex_cron,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Bulk reindex (COLQWEN_REINDEX_CRON, default nightly at 02:00).",
)

JOBS: list = [ingest_job, remove_documents_job, reindex_job]
SENSORS: list = [inbox_sensor]
SCHEDULES: list = [reindex_schedule]
