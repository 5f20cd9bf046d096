"""The four assets, partitioned by document, computed by one step: ``document_pipeline``.

One step, so that a run of many documents loads the model once, shares model batches across
documents, overlaps rendering with embedding and writes Milvus through one connection
(``bulk.engine``). Dagster records a materialisation per document and stage as each document
finishes, and only for stages that did work: a document whose file, render settings, model and
index are unchanged costs a ``stat`` and leaves no event. A broken document fails alone: the others
of the run are materialised, and the run fails at the end naming the broken ones. The checks of
each document are evaluated in the same step (``defs/checks.py``).
"""

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from colqwen_pipeline.bulk import versions
from colqwen_pipeline.bulk.runs import TRIGGER
from colqwen_pipeline.defs import checks
from colqwen_pipeline.defs.resources import ColQwenResource
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
documents = dg.DynamicPartitionsDefinition(name="documents")
GROUP = "colqwen"
STAGE_ASSETS = {  # engine stage -> asset
    "raw": "raw_documents",
    "pages": "page_images",
    "embeddings": "page_embeddings",
    "index": "milvus_collection",
}
CODE_VERSIONS = {
    "raw": "1",
    "pages": versions.RENDER_CODE,
    "embeddings": versions.EMBED_CODE,
    "index": versions.INDEX_CODE,
}
SPECS = [
    dg.AssetSpec(
        "raw_documents",
        code_version=CODE_VERSIONS["raw"],
        description="The source file in the inbox, identified by its content hash.",
        kinds={"file"},
    ),
    dg.AssetSpec(
        "page_images",
        deps=["raw_documents"],
        description="Rasterised pages (PNG) plus a manifest with each page's pixel hash.",
        code_version=versions.RENDER_CODE,
        kinds={"pdf", "image"},
    ),
    dg.AssetSpec(
        "page_embeddings",
        deps=["page_images"],
        description="ColQwen2.5 multi-vectors (128-d per token) of every page; unchanged pages come from the cache.",
        code_version=versions.EMBED_CODE,
        kinds={"pytorch"},
    ),
    dg.AssetSpec(
        "milvus_collection",
        deps=["page_embeddings"],
        description="The document's token vectors in Milvus, replacing any earlier copy (exactly one remains).",
        code_version=versions.INDEX_CODE,
        kinds={"milvus"},
    ),
]
SPECS = [spec.replace_attributes(partitions_def=documents, group_name=GROUP, skippable=True) for spec in SPECS]


class IngestConfig(dg.Config):
    force: bool = False  # redo every stage even where the versions say nothing changed


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.multi_asset(
        name="document_pipeline",
        specs=SPECS,
        check_specs=checks.CHECK_SPECS,
        can_subset=True,
        pool="gpu",  # GPU work: one such step at a time (dagster.yaml)
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=Settings().max_documents_per_run),
    )
    def document_pipeline(context: dg.AssetExecutionContext, config: IngestConfig, colqwen: ColQwenResource):
        """Bring the run's documents up to date, stage by stage, as far as the selection reaches."""
        settings = colqwen.settings()
        _tag_trigger(context)
        selected = [stage for stage, asset in STAGE_ASSETS.items() if dg.AssetKey(asset) in context.selected_asset_keys]
        if not selected:  # a run of checks only
            checks.evaluate_selected(context, settings)
            return
        from colqwen_pipeline.bulk.engine import run_documents

        keys = context.partition_keys

        def say(message: str) -> None:  # the run's log in the UI, and the terminal of a CLI ingest
            context.log.info(message)
            log.info(message)

        say(f"{len(keys)} document(s), stages up to {STAGE_ASSETS[selected[-1]]}")
        run_checks = checks.RunChecks(context, settings)
        try:
            report = run_documents(
                settings,
                keys,
                until=selected[-1],
                force=config.force,
                say=say,
                on_document=lambda result: _record(context, selected, result, run_checks),
            )
            checks.evaluate_after_run(context, run_checks, report)
        finally:  # an interrupted or crashed run keeps the verdicts on the documents it finished
            run_checks.log_documents()
        if report.failed:
            lines = sorted(report.failed.values())
            raise dg.Failure(
                description=f"{len(lines)} of {len(keys)} document(s) failed; the others are indexed: "
                + "; ".join(lines[:20])
                + (f"; … and {len(lines) - 20} more" if len(lines) > 20 else ""),
                metadata={"failed": dg.MetadataValue.json(report.failed)},
            )
        yield from ()


def _tag_trigger(context: dg.AssetExecutionContext) -> None:
    """Runs the project launches say who did (cli, sensor, schedule); any other run was launched
    through Dagster itself (the UI's Materialize button runs ``__ASSET_JOB``, a backfill, the API)."""
    if TRIGGER not in context.run.tags:
        context.instance.add_run_tags(context.run_id, {TRIGGER: "ui"})


def _record(context: dg.AssetExecutionContext, selected: list[str], result: Any, run_checks: checks.RunChecks) -> None:
    """One materialisation per stage that did work for this document, with its data version; a
    failed document's one-line cause on the partition of the first asset it did not reach."""
    if not result.ok:
        _record_failure(context, selected, result)
    for stage in selected:
        outcome = result.stages.get(stage)
        if outcome is None or not outcome.changed:
            continue
        metadata = {k: v for k, v in outcome.metadata.items() if v is not None}
        if stage == "pages":
            metadata["preview"] = dg.MetadataValue.md(_preview(outcome.metadata["path"]))
        if stage == "embeddings" and metadata.get("random_weights"):
            from colqwen_pipeline.embedding.registry import RANDOM_WEIGHTS_WARNING

            metadata["warning"] = RANDOM_WEIGHTS_WARNING
        for name in ("path",):
            if name in metadata:
                metadata[name] = dg.MetadataValue.path(metadata[name])
        context.log_event(
            dg.AssetMaterialization(
                STAGE_ASSETS[stage], partition=result.key, metadata=metadata, tags=_provenance(stage, result)
            )
        )
    if "pages" in selected and result.pages_check is not None:
        run_checks.document("pages_complete", result.key, result.pages_check)
    if "embeddings" in selected and result.embedding_check is not None:
        run_checks.document("embedding_dimension", result.key, result.embedding_check)


def _record_failure(context: dg.AssetExecutionContext, selected: list[str], result: Any) -> None:
    """An observation, shown on the partition's page beside "Run … failed": the cause in one line."""
    stage = next((s for s in selected if s not in result.stages or s == selected[-1]), selected[-1])
    metadata = {"error": result.error, "run_id": context.run_id}
    context.log_event(
        dg.AssetObservation(STAGE_ASSETS[stage], partition=result.key, description=result.error, metadata=metadata)
    )


def failed_since_change(instance: dg.DagsterInstance, files: dict[str, Path]) -> dict[str, str]:
    """doc_id -> cause, for the files whose latest failure that ``_record_failure`` recorded (in a
    run of any kind: sensor, schedule, CLI, UI) is newer than the file: a changed file is retried."""
    failed = {}
    for doc_id, (cause, when) in _latest_failures(instance, sorted(files)).items():
        with contextlib.suppress(OSError):
            if when >= files[doc_id].stat().st_mtime:
                failed[doc_id] = cause
    return failed


def _latest_failures(instance: dg.DagsterInstance, doc_ids: list[str]) -> dict[str, tuple[str, float]]:
    """doc_id -> (cause, unix time) of its latest recorded failure; one query per stage asset and
    500 documents."""
    latest: dict[str, tuple[str, float]] = {}
    for asset in STAGE_ASSETS.values():
        for start in range(0, len(doc_ids), 500):
            chunk = doc_ids[start : start + 500]
            records = instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=chunk), limit=4 * len(chunk)
            ).records
            for record in records:
                observation, when = record.asset_observation, record.timestamp
                if observation is None or observation.partition is None or not observation.description:
                    continue
                if when > latest.get(observation.partition, ("", 0.0))[1]:
                    latest[observation.partition] = (observation.description, when)
    return latest


def _provenance(stage: str, result: Any) -> dict[str, str]:
    """Dagster's data-version tags, so the UI can tell a stale partition: this stage's version, the
    code version of the asset, and the version of the upstream stage it was made from."""
    tags = {
        "dagster/data_version": result.stages[stage].version,
        "dagster/data_version_is_user_provided": "true",
        "dagster/code_version": CODE_VERSIONS[stage],
    }
    upstream = list(STAGE_ASSETS)[list(STAGE_ASSETS).index(stage) - 1] if stage != "raw" else None
    if upstream and upstream in result.stages:
        tags[f"dagster/input_data_version/{STAGE_ASSETS[upstream]}"] = result.stages[upstream].version
        tags[f"dagster/input_event_pointer/{STAGE_ASSETS[upstream]}"] = "NULL"
    return tags


def _preview(pages_dir: str) -> str:
    from pathlib import Path

    from colqwen_pipeline.documents.manifest import Manifest
    from colqwen_pipeline.documents.preview import thumbnails_markdown

    directory = Path(pages_dir)
    return thumbnails_markdown(directory, Manifest.read(directory))


ASSETS = [document_pipeline]
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(document_pipeline),
    partitions_def=documents,
    run_tags={TRIGGER: "ui"},  # launched from the UI; the CLI, sensor and schedule set their own
    description="Bring documents up to date: new or changed files through every stage, the rest untouched.",
)
