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

Every check the step plans gets an evaluation for the run before the step ends, even when the run
fails for one broken document: Dagster shows a planned check without one as "Execution failed"
(or "Skipped"). A check with nothing to judge passes saying so; collection checks of a run that did
not change the index carry over their last verdict; documents are logged worst last, because the UI
shows a check's latest evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from colqwen_pipeline.defs.event_log import one_transaction_per_file
from colqwen_pipeline.evaluation.checks import CheckOutcome
from colqwen_pipeline.settings import Settings

DOCUMENT_CHECKS = {
    "pages_complete": ("page_images", "Every page of the document rendered (WARN: a partial document is indexed)."),
    "embedding_dimension": ("page_embeddings", "Every page has tokens; vectors: the model's width, finite, unit-norm."),
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


EVALUATIONS_PER_COMMIT = 100  # per-document verdicts written together: short enough not to keep other writers waiting
WARNING_LABEL = "Warning: "  # Dagster's UI tags a failed WARN check "Failed": the description says what it is
NOT_INDEXED = "; not indexed: "
CARRIED_OVER = " (as last checked: the index has not changed since run "
OLD_CARRIED_OVER = " (carried over: the index is unchanged since run "  # in descriptions stored before the rewording
NOTHING_TO_JUDGE = {
    "pages_complete": "nothing to judge: no document was rendered in this run",
    "embedding_dimension": "nothing to judge: no document was embedded in this run",
    "throughput": "nothing to judge: no page went through the model in this run",
}


def evaluation(
    name: str, outcome: CheckOutcome, severity: dg.AssetCheckSeverity, partition: str | None = None
) -> dg.AssetCheckEvaluation:
    metadata: dict[str, Any] = dict(outcome.metadata)
    for table, rows in outcome.tables.items():
        metadata[table] = _table(rows)
    asset = (DOCUMENT_CHECKS | COLLECTION_CHECKS)[name][0]
    description = outcome.description
    if not outcome.passed and severity == dg.AssetCheckSeverity.WARN and not description.startswith(WARNING_LABEL):
        description = WARNING_LABEL + description
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset),
        check_name=name,
        passed=outcome.passed,
        severity=severity,
        description=description,
        metadata=metadata,
        partition=partition,
    )


def _table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.text("(none)")
    kinds = {bool: "bool", int: "int", float: "float"}
    columns = [dg.TableColumn(name, kinds.get(type(value), "string")) for name, value in rows[0].items()]
    return dg.MetadataValue.table([dg.TableRecord(row) for row in rows], dg.TableSchema(columns=columns))


def _key(name: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(dg.AssetKey((DOCUMENT_CHECKS | COLLECTION_CHECKS)[name][0]), name)


class RunChecks:
    """The check evaluations of one step. Per-document outcomes are collected as documents finish
    and logged by ``log_documents`` (passing ones first, so the latest a check shows is its worst);
    ``finish`` gives every selected check its evaluation for the run."""

    def __init__(self, context: dg.AssetExecutionContext, settings: Settings):
        self.context, self.settings = context, settings
        self.outcomes: dict[str, dict[str, CheckOutcome]] = {name: {} for name in DOCUMENT_CHECKS}
        self.logged = False

    def selected(self, name: str) -> bool:
        return _key(name) in self.context.selected_asset_check_keys

    def document(self, name: str, key: str, outcome: CheckOutcome) -> None:
        if self.selected(name):
            self.outcomes[name][key] = outcome

    def log_documents(self) -> None:
        """Also when the step is failing: what was judged stays judged."""
        if self.logged:
            return
        self.logged = True
        for name, by_key in self.outcomes.items():
            judged = sorted(by_key.items(), key=lambda item: not item[1].passed)
            for start in range(0, len(judged), EVALUATIONS_PER_COMMIT):
                with one_transaction_per_file(self.context.instance):
                    for key, outcome in judged[start : start + EVALUATIONS_PER_COMMIT]:
                        self.context.log_event(evaluation(name, outcome, SEVERITY[name], partition=key))

    def finish(self, failed: dict[str, str], index_changed: bool, judge_collection: bool = False) -> None:
        """One evaluation per selected check for the run; collection checks judge the collection when
        the run changed the index (or ``judge_collection``), else carry over their last verdict."""
        for name in DOCUMENT_CHECKS:
            if self.selected(name):
                self.context.log_event(evaluation(name, _run_summary(name, self.outcomes[name]), SEVERITY[name]))
        self.log_documents()
        for name, (judge, severity) in _collection_judges(self.settings).items():
            if not self.selected(name):
                continue
            carried = None if index_changed or judge_collection else _last_verdict(self.context, name)
            outcome, severity = carried or (_judged(judge, self.settings), severity)
            self.context.log_event(evaluation(name, _not_indexed(outcome, failed), severity))


def _run_summary(name: str, by_key: dict[str, CheckOutcome]) -> CheckOutcome:
    """The run's verdict on a per-document check: all of its documents passed, or which did not."""
    if not by_key:
        return CheckOutcome(True, NOTHING_TO_JUDGE[name], {"documents": 0})
    failing = {key: outcome.description for key, outcome in by_key.items() if not outcome.passed}
    metadata = {"documents": len(by_key), "not_passed": len(failing)}
    shared = {outcome.description for outcome in by_key.values()}
    if len(shared) == 1:  # one verdict for all (throughput is the run's): its figures are the run's too
        metadata = next(iter(by_key.values())).metadata | metadata
    if not failing:
        common = f": {shared.pop()}" if len(shared) == 1 else ""
        return CheckOutcome(True, f"{len(by_key)} document(s), all passed{common}", metadata)
    shown = "; ".join(f"{key}: {reason}" for key, reason in list(failing.items())[:3])
    more = f"; … and {len(failing) - 3} more" if len(failing) > 3 else ""
    tables = {"documents_not_passed": [{"document": k, "reason": r} for k, r in failing.items()]}
    description = f"{len(failing)} of {len(by_key)} document(s) did not pass: {shown}{more}"
    return CheckOutcome(False, description, metadata, tables)


def _collection_judges(settings: Settings) -> dict[str, tuple[Callable[[Settings], CheckOutcome], Any]]:
    from colqwen_pipeline.evaluation import collection

    return {
        "retrieval_quality": (collection.retrieval_quality, dg.AssetCheckSeverity(settings.quality_severity)),
        "index_fidelity": (collection.fidelity, dg.AssetCheckSeverity.ERROR),
        "collection_consistency": (collection.consistency, dg.AssetCheckSeverity.ERROR),
    }


def _judged(judge: Callable[[Settings], CheckOutcome], settings: Settings) -> CheckOutcome:
    """A judge that cannot run fails its check with one line; it never fails the documents' step."""
    try:
        return judge(settings)
    except Exception as error:  # noqa: BLE001 - the run's documents are indexed whatever a check hits
        first_line = (str(error).strip().splitlines() or [""])[0]
        return CheckOutcome(False, f"could not evaluate: {type(error).__name__}: {first_line}")


def _not_indexed(outcome: CheckOutcome, failed: dict[str, str]) -> CheckOutcome:
    """The collection is judged on the documents that are indexed; the run's failures are listed."""
    if not failed:
        return outcome
    metadata = outcome.metadata | {"failed_documents": dg.MetadataValue.json(failed)}
    names = ", ".join(sorted(failed)[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
    description = f"{outcome.description}{NOT_INDEXED}{names} (failed in this run, see the run's failure)"
    return CheckOutcome(outcome.passed, description, metadata, outcome.tables)


def _last_verdict(context: dg.AssetExecutionContext, name: str) -> tuple[CheckOutcome, Any] | None:
    """The check's last completed evaluation and its severity, carried over to this run (None: never
    evaluated). It is the verdict on the same index: this run did not change it."""
    # Dagster has no public query for a check's past evaluations (the instance gives only the latest
    # record, which is this run's planned one): read the event log storage, filtered by status.
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    history = context.instance.event_log_storage.get_asset_check_execution_history(
        _key(name), limit=1, status={Status.SUCCEEDED, Status.FAILED}
    )
    previous = history[0].evaluation if history else None
    if previous is None:
        return None
    metadata = {k: v for k, v in previous.metadata.items() if k != "failed_documents"}
    judged_in = str(metadata.get("judged_in_run", dg.MetadataValue.text(history[0].run_id)).value)
    verdict = (previous.description or "").removeprefix(WARNING_LABEL).split(NOT_INDEXED)[0]
    verdict = verdict.split(CARRIED_OVER)[0].split(OLD_CARRIED_OVER)[0]
    metadata["judged_in_run"] = dg.MetadataValue.text(judged_in)
    return CheckOutcome(previous.passed, f"{verdict}{CARRIED_OVER}{judged_in[:8]})", metadata), previous.severity


def evaluate_after_run(context: dg.AssetExecutionContext, run_checks: RunChecks, report: Any) -> None:
    """Throughput of every document the run embedded, then every selected check's run verdict."""
    from colqwen_pipeline.evaluation.checks import check_throughput

    embedded = [d for d in report.documents if d.ok and "embeddings" in d.stages and d.stages["embeddings"].changed]
    if embedded:
        metrics = report.forward | {
            "device": embedded[0].stages["embeddings"].metadata.get("device", "cpu"),
            "served_by": embedded[0].stages["embeddings"].metadata.get("served_by", "this process"),
            "end_to_end_pages_per_s": report.end_to_end_pages_per_s,
            "model_load_s": report.model_load_s,
        }
        outcome = check_throughput(metrics, _floors(run_checks.settings))
        for document in embedded:
            run_checks.document("throughput", document.key, outcome)
    run_checks.finish(report.failed, index_changed=bool(report.count("index") or report.switched_to))


def evaluate_selected(context: dg.AssetExecutionContext, settings: Settings) -> None:
    """A run of checks only: per-document checks from the artifacts on disk, then the collection's."""
    from colqwen_pipeline.embedding.registry import model_identity
    from colqwen_pipeline.evaluation.checks import check_embeddings

    run_checks = RunChecks(context, settings)
    keys = context.partition_keys if context.has_partition_key or context.has_partition_key_range else []
    for key in keys:
        run_checks.document("pages_complete", key, _pages_complete_from_disk(settings, key))
        directory = settings.embeddings_dir / key
        dim = settings.embedding_dim or model_identity(settings).dim  # 0: the model family's width
        outcome = check_embeddings(directory, dim, settings.norm_tolerance)
        run_checks.document("embedding_dimension", key, outcome)
    run_checks.finish({}, index_changed=False, judge_collection=True)


def _pages_complete_from_disk(settings: Settings, key: str) -> CheckOutcome:
    from colqwen_pipeline.bulk.engine import check_pages
    from colqwen_pipeline.documents.manifest import Manifest

    try:
        return check_pages(Manifest.read(settings.pages_dir / key))
    except (OSError, ValueError, KeyError, TypeError):
        return CheckOutcome(False, f"no readable page manifest at {settings.pages_dir / key}")


def _floors(settings: Settings) -> dict[str, float]:
    return {"cpu": settings.min_pages_per_s_cpu, "cuda": settings.min_pages_per_s_cuda}
