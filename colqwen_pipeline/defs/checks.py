"""Asset checks. Thin: the logic lives in ``colqwen_pipeline.evaluation`` and runs without Dagster.

All checks are declared on ``document_pipeline`` and evaluated inside its step, in every path
(CLI, sensor, schedule, UI), so a run's checks judge exactly what the run wrote:
- per document (partitioned evaluations): ``pages_complete`` (WARN: pages no renderer could draw
  were skipped, the rest is indexed), ``embedding_dimension`` (blocking: a document whose
  embeddings fail it is not indexed and fails alone) and ``throughput`` (forward-only pages/s of
  the run that embedded it);
- once per run, and only when the run changed the index: ``retrieval_quality``,
  ``index_fidelity`` and ``collection_consistency``, which judge the whole collection.
A run of checks only (the UI's "Execute checks") evaluates what is selected from what is on disk.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from colqwen_pipeline.evaluation.checks import CheckOutcome
from colqwen_pipeline.settings import Settings

DOCUMENT_CHECKS = {
    "pages_complete": ("page_images", "Every page of the document rendered (WARN: a partial document is indexed)."),
    "embedding_dimension": ("page_embeddings", "Every page has tokens; vectors are 128-d, finite and unit-norm."),
    "throughput": ("page_embeddings", "Forward-only pages/s of the run that embedded the document, vs the floor."),
}
COLLECTION_CHECKS = {
    "retrieval_quality": ("milvus_collection", "nDCG@5, recall@1/5/10 and MRR@10 of the eval set on the collection."),
    "index_fidelity": ("milvus_collection", "The collection's top-k against exact MaxSim over the stored embeddings."),
    "collection_consistency": ("milvus_collection", "Rows per document equal its embeddings; none for vanished ones."),
}
SEVERITY = {
    "pages_complete": dg.AssetCheckSeverity.WARN,
    "embedding_dimension": dg.AssetCheckSeverity.ERROR,
    "throughput": dg.AssetCheckSeverity.WARN,
}
CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=asset, description=text, blocking=name == "embedding_dimension")
    for name, (asset, text) in (DOCUMENT_CHECKS | COLLECTION_CHECKS).items()
]


def evaluation(
    name: str, outcome: CheckOutcome, severity: dg.AssetCheckSeverity, partition: str | None = None
) -> dg.AssetCheckEvaluation:
    metadata: dict[str, Any] = dict(outcome.metadata)
    for table, rows in outcome.tables.items():
        metadata[table] = _table(rows)
    asset = (DOCUMENT_CHECKS | COLLECTION_CHECKS)[name][0]
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset),
        check_name=name,
        passed=outcome.passed,
        severity=severity,
        description=outcome.description,
        metadata=metadata,
        partition=partition,
    )


def _table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.text("(none)")
    kinds = {bool: "bool", int: "int", float: "float"}
    columns = [dg.TableColumn(name, kinds.get(type(value), "string")) for name, value in rows[0].items()]
    return dg.MetadataValue.table([dg.TableRecord(row) for row in rows], dg.TableSchema(columns=columns))


def _selected(context: dg.AssetExecutionContext, name: str) -> bool:
    asset = (DOCUMENT_CHECKS | COLLECTION_CHECKS)[name][0]
    return dg.AssetCheckKey(dg.AssetKey(asset), name) in context.selected_asset_check_keys


def log_document_check(context: dg.AssetExecutionContext, name: str, key: str, outcome: CheckOutcome) -> None:
    if _selected(context, name):
        context.log_event(evaluation(name, outcome, SEVERITY[name], partition=key))


def evaluate_after_run(context: dg.AssetExecutionContext, settings: Settings, report: Any) -> None:
    """Throughput of every document the run embedded; the collection checks if the index changed."""
    from colqwen_pipeline.evaluation.checks import check_throughput

    embedded = [d for d in report.documents if d.ok and "embeddings" in d.stages and d.stages["embeddings"].changed]
    if embedded:
        metrics = report.forward | {
            "device": embedded[0].stages["embeddings"].metadata.get("device", "cpu"),
            "served_by": embedded[0].stages["embeddings"].metadata.get("served_by", "this process"),
            "end_to_end_pages_per_s": report.end_to_end_pages_per_s,
            "model_load_s": report.model_load_s,
        }
        outcome = check_throughput(metrics, _floors(settings))
        for document in embedded:
            log_document_check(context, "throughput", document.key, outcome)
    changed = report.count("index") or report.switched_to
    if changed:
        collection_checks(context, settings)


def collection_checks(context: dg.AssetExecutionContext, settings: Settings) -> None:
    from colqwen_pipeline.evaluation import collection

    judges = {
        "retrieval_quality": (collection.retrieval_quality, dg.AssetCheckSeverity(settings.quality_severity)),
        "index_fidelity": (collection.fidelity, dg.AssetCheckSeverity.ERROR),
        "collection_consistency": (collection.consistency, dg.AssetCheckSeverity.ERROR),
    }
    for name, (judge, severity) in judges.items():
        if _selected(context, name):
            context.log_event(evaluation(name, judge(settings), severity))


def evaluate_selected(context: dg.AssetExecutionContext, settings: Settings) -> None:
    """A run of checks only: per-document checks from the artifacts on disk, then the collection's."""
    from colqwen_pipeline.evaluation.checks import check_embeddings

    keys = context.partition_keys if context.has_partition_key or context.has_partition_key_range else []
    for key in keys:
        _pages_complete_from_disk(context, settings, key)
        directory = settings.embeddings_dir / key
        log_document_check(
            context,
            "embedding_dimension",
            key,
            check_embeddings(directory, settings.embedding_dim, settings.norm_tolerance),
        )
    collection_checks(context, settings)


def _pages_complete_from_disk(context: dg.AssetExecutionContext, settings: Settings, key: str) -> None:
    from colqwen_pipeline.bulk.engine import check_pages
    from colqwen_pipeline.documents.manifest import Manifest

    try:
        outcome = check_pages(Manifest.read(settings.pages_dir / key))
    except (OSError, ValueError, KeyError, TypeError):
        outcome = CheckOutcome(False, f"no readable page manifest at {settings.pages_dir / key}")
    log_document_check(context, "pages_complete", key, outcome)


def _floors(settings: Settings) -> dict[str, float]:
    return {"cpu": settings.min_pages_per_s_cpu, "cuda": settings.min_pages_per_s_cuda}
