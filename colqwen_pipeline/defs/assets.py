"""The four assets, partitioned by document, computed by one step: ``document_pipeline``.

One step, so that a run of many documents loads the model once, shares model batches across
documents, overlaps rendering with embedding and writes Milvus through one connection
(``bulk.engine``). Dagster records a materialisation per document and stage as each document
finishes, and only for stages that did work: a document whose file, render settings, model and
index are unchanged costs a ``stat`` and leaves no event.

Partition statuses stay true when one document breaks. Dagster marks every partition a failed run
targeted and did not materialise as failed, so a run that is about to fail first re-confirms the
stages that were current (a materialisation with the same data version, ``unchanged: true``) of
every document that did not fail, and of the broken one the stages before the one that failed.
The broken document is then failed from its first failed stage on, with its one-line cause as an
observation on that partition; the run fails at the end naming the broken documents.
"""

import logging
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from colqwen_pipeline.bulk import versions
from colqwen_pipeline.bulk.plan import current_target
from colqwen_pipeline.defs import checks
from colqwen_pipeline.defs.event_log import one_transaction_per_file
from colqwen_pipeline.defs.resources import ColQwenResource
from colqwen_pipeline.defs.runs import TRIGGER
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
        description=(
            "Multi-vectors of every page from the configured model family (ColQwen2.5: 128-d per token, "
            "ColQwen3: 320-d); unchanged pages come from the cache."
        ),
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
        failure_context = current_target(settings).digest(settings)

        def on_document(result: Any) -> None:
            with one_transaction_per_file(context.instance):  # a document's events: one commit
                _record(context, selected, result, run_checks, failure_context)

        try:
            report = run_documents(
                settings,
                keys,
                until=selected[-1],
                force=config.force,
                say=say,
                on_document=on_document,
            )
            checks.evaluate_after_run(context, run_checks, report)
        finally:  # an interrupted or crashed run keeps the verdicts on the documents it finished
            run_checks.log_documents()
        if report.failed:
            _reconfirm_current(context, selected, report.documents)
            lines = sorted(report.failed.values())
            raise dg.Failure(
                description=f"{len(lines)} of {len(keys)} document(s) failed"
                + ("; the others are indexed: " if len(lines) < len(keys) else ": ")
                + "; ".join(lines[:20])
                + (f"; … and {len(lines) - 20} more" if len(lines) > 20 else ""),
                metadata={"failed": dg.MetadataValue.json(report.failed)},
            )
        yield from ()


def _tag_trigger(context: dg.AssetExecutionContext) -> None:
    """Runs the project launches say who did (cli, sensor, schedule); any other run was launched
    through Dagster itself (the UI's Materialize button runs ``__ASSET_JOB``, a backfill, the API)."""
    if TRIGGER not in context.run.tags:
        context.instance.add_run_tags(context.run.run_id, {TRIGGER: "ui"})


def _record(
    context: dg.AssetExecutionContext, selected: list[str], result: Any, run_checks: checks.RunChecks, target: str
) -> None:
    """One materialisation per stage that did work for this document, with its data version; a
    failed document's one-line cause on the partition of the first asset it did not reach."""
    if not result.ok:
        _record_failure(context, selected, result, target)
    for stage in selected:
        if not result.completed(stage) or not result.stages[stage].changed:
            continue
        outcome = result.stages[stage]
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


def _record_failure(context: dg.AssetExecutionContext, selected: list[str], result: Any, target: str) -> None:
    """An observation on the partition of the first stage the document did not complete: its cause
    in one line (shown on that partition's page), and the file and target it failed with, so that
    planning retries it only once either changes."""
    stage = result.failed_stage if result.failed_stage in selected else selected[-1]
    size, mtime_ns = _source_stat(result)
    metadata = {"error": result.error, "run_id": context.run.run_id, "context": target}
    metadata |= {"source_size": size, "source_mtime_ns": mtime_ns} if size >= 0 else {}
    context.log_event(
        dg.AssetObservation(STAGE_ASSETS[stage], partition=result.key, description=result.error, metadata=metadata)
    )


def _source_stat(result: Any) -> tuple[int, int]:
    raw = result.stages["raw"].metadata if "raw" in result.stages else None
    if raw is not None:
        return raw["bytes"], raw["mtime_ns"]
    try:
        stat = result.path.stat()
    except (OSError, AttributeError):
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _reconfirm_current(context: dg.AssetExecutionContext, selected: list[str], results: list[Any]) -> None:
    """Before the run fails: a materialisation, same data version, for each stage that was already
    current and did not fail, so Dagster does not mark it failed with the run (module docstring)."""
    for result in results:
        with one_transaction_per_file(context.instance):  # a document's events: one commit
            for stage in selected:
                if not result.completed(stage) or result.stages[stage].changed:
                    continue
                context.log_event(
                    dg.AssetMaterialization(
                        STAGE_ASSETS[stage],
                        partition=result.key,
                        description="current: re-confirmed by a run that failed for another reason",
                        metadata={"unchanged": True},
                        tags=_provenance(stage, result),
                    )
                )


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

    from colqwen_pipeline.documents.manifest import Manifest
    from colqwen_pipeline.documents.preview import thumbnails_markdown

    directory = Path(pages_dir)
    return thumbnails_markdown(directory, Manifest.read(directory))


ASSETS = [document_pipeline]
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(document_pipeline),
    run_tags={TRIGGER: "ui"},  # launched from the UI; the CLI, sensor and schedule set their own
    description="Bring documents up to date: new or changed files through every stage, the rest untouched.",
)
