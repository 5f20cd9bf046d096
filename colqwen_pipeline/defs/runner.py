"""Headless ingest: register inbox files as partitions and materialise them in this process,
on the Dagster instance under the state directory (the UI shows these runs).

One process means one model load for every document of the call, and the only opener of the
Milvus Lite file."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dagster as dg

from colqwen_pipeline.defs.instance import PARTITIONS, dagster_instance, failed_since_change
from colqwen_pipeline.inbox import document_key, inbox_files, mass_removal
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)


class IngestInterrupted(Exception):
    """A signal stopped the ingest between or inside runs; everything written so far is consistent."""


@dataclass
class IngestSummary:
    documents: int = 0
    pages: int = 0
    tokens: int = 0  # token vectors indexed
    removed: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # partition key -> one-line reason
    not_retried: list[str] = field(default_factory=list)  # of ``failed``: failed before as they are now
    runs: int = 0
    checks: dict[str, str] = field(default_factory=dict)  # collection check -> "passed" or "WARN/ERROR: why"


def select_documents(settings: Settings, paths: Sequence[str]) -> dict[str, Path]:
    files = inbox_files(settings.inbox)
    if not paths:
        return files
    inbox = settings.inbox.resolve()
    wanted = {}
    for raw in paths:
        path = Path(raw).resolve()
        if not path.is_relative_to(inbox):
            raise ValueError(f"{raw}: not inside the inbox {settings.inbox} (copy it there first)")
        chosen = [f for f in files.values() if f.resolve() == path or f.resolve().is_relative_to(path)]
        if not chosen:
            raise ValueError(f"{raw}: no document there")
        wanted.update({document_key(f.relative_to(settings.inbox).as_posix()): f for f in chosen})
    return wanted


def ingest(
    settings: Settings,
    paths: Sequence[str] = (),
    instance: dg.DagsterInstance | None = None,
    echo: Callable[[str], None] = print,
    confirm_removals: bool = False,
    force: bool = False,
    stop_requested: Callable[[], bool] = lambda: False,
    trigger: str = "cli",
) -> IngestSummary:
    """Bring the selected documents (all of the inbox by default) up to date through ``ingest_job``,
    the job the sensor and the schedule launch, over ranges of COLQWEN_MAX_DOCUMENTS_PER_RUN
    documents; prune vanished ones. Only documents that need work get a run (``bulk.plan``): a
    document that failed as its file is now is listed, and retried once it changes, when named in
    ``paths``, or with ``force`` (which also redoes every stage)."""
    from colqwen_pipeline.bulk.plan import current_target, plan_documents
    from colqwen_pipeline.defs.runs import keys_in_flight, partition_ranges, range_tags
    from colqwen_pipeline.defs.stale_runs import clear_dead_runs, process_tags, wait_for_pool

    started = time.perf_counter()
    instance = instance or dagster_instance(settings)
    for line in clear_dead_runs(instance):
        echo(line)
    documents = select_documents(settings, paths)
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    instance.add_dynamic_partitions(PARTITIONS, [k for k in documents if k not in known])
    summary = IngestSummary()
    if not paths:
        confirmed = confirm_removals or settings.allow_mass_removal
        summary.removed = prune(settings, instance, set(documents), known, echo, confirmed)
    ordered = instance.get_dynamic_partitions(PARTITIONS)
    plan = plan_documents(
        settings,
        documents,
        current_target(settings),
        failures=(lambda _: {}) if paths else (lambda files: failed_since_change(instance, files)),
        in_flight=keys_in_flight(instance, ordered, "ingest_job"),
        force=force,
    )
    summary.failed |= plan.failed
    summary.not_retried = sorted(plan.failed)
    for key in plan.in_flight:
        echo(f"{key}: another run is working on it now; left to that run")
    if plan.failed:
        echo(
            f"{len(plan.failed)} document(s) failed before as they are now and are not retried (change the file, "
            "name it, or use --force)"
        )
    ranges = partition_ranges(ordered, plan.work, settings.max_documents_per_run, may_span=plan.current)
    if not ranges:
        echo(f"nothing to do: {len(plan.current)} document(s) current")
    position = {key: i for i, key in enumerate(ordered)}
    for number, (first, last) in enumerate(ranges, 1):
        span = ordered[position[first] : position[last] + 1]
        echo(f"run {number}/{len(ranges)}: {len(span)} document(s)")
        wait_for_pool(instance, "gpu", echo)
        result = _execute(instance, range_tags(first, last, trigger) | process_tags(), force, settings)
        summary.runs += 1
        if _interrupted(result) or stop_requested():
            raise IngestInterrupted(
                f"interrupted during run {number}/{len(ranges)}: documents finished before it stay indexed, "
                "the document in progress was rolled back; run ingest again to continue"
            )
        summary.failed |= _failed_documents(result, span)
        _collect_checks(instance, result.run_id, summary, echo)
    for key in documents:
        if key in summary.failed or key in plan.in_flight:
            continue
        pages, tokens = _indexed(settings, key)
        summary.documents += 1
        summary.pages += pages
        summary.tokens += tokens
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _execute(
    instance: dg.DagsterInstance, tags: dict[str, str], force: bool, settings: Settings
) -> dg.ExecuteInProcessResult:
    from colqwen_pipeline.definitions import defs

    return defs.resolve_job_def("ingest_job").execute_in_process(
        instance=instance,
        tags=tags,
        run_config={
            "ops": {"document_pipeline": {"config": {"force": force}}},
            "resources": {"colqwen": {"config": resource_config(settings)}},  # these settings, not only COLQWEN_*
            # Failures are summarised by this command, one line each; progress: the python logger.
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
        raise_on_error=False,
    )


def resource_config(settings: Settings) -> dict[str, Any]:
    """The run's ColQwenResource fields from ``settings``: an ``Index(home=...)`` is not the environment."""
    from colqwen_pipeline.defs.resources import ColQwenResource

    values = {name: getattr(settings, name) for name in ColQwenResource.model_fields}
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items() if value}


def _collect_checks(instance: dg.DagsterInstance, run_id: str, summary: IngestSummary, echo: Callable) -> None:
    from colqwen_pipeline.defs.checks import COLLECTION_CHECKS

    evaluations = run_check_evaluations(instance, run_id)
    for line in _check_lines(evaluations):
        echo(f"    {line}")
    for evaluation in (e for e in evaluations if e.partition is None and e.check_name in COLLECTION_CHECKS):
        summary.checks[evaluation.check_name] = _check_line(evaluation)
        echo(f"check {evaluation.check_name}: {summary.checks[evaluation.check_name]}")


def prune(
    settings: Settings,
    instance: dg.DagsterInstance,
    present: set[str],
    known: set[str],
    echo: Callable[[str], None],
    confirmed: bool = False,
) -> int:
    """Documents gone from the inbox leave the index, the artifacts and the partitions, unless most
    of the inbox vanished at once (then nothing is removed without ``confirmed``)."""
    from colqwen_pipeline.bulk import stages

    gone = sorted(known - present)
    if not confirmed and (refusal := mass_removal(len(known), len(gone))):
        echo(f"warning: {refusal}")
        return 0
    for key in gone:
        echo(f"removing {key} (no longer in the inbox)")
        stages.remove_document(settings, key)
        instance.delete_dynamic_partition(PARTITIONS, key)
    return len(gone)


def collection_checks(instance: dg.DagsterInstance, echo: Callable[[str], None]) -> dict[str, str]:
    """The checks that judge the whole collection, on their own (ingest runs them when the index changed)."""
    from colqwen_pipeline.definitions import RESOURCES
    from colqwen_pipeline.defs.assets import ASSETS
    from colqwen_pipeline.defs.checks import COLLECTION_CHECKS

    keys = [dg.AssetCheckKey(dg.AssetKey(asset), name) for name, (asset, _) in COLLECTION_CHECKS.items()]
    result = dg.materialize(
        ASSETS,
        selection=dg.AssetSelection.checks(*keys),
        instance=instance,
        resources=RESOURCES,
        raise_on_error=False,
        tags={"colqwen/trigger": "cli"},
    )
    outcomes = {e.check_name: _check_line(e) for e in run_check_evaluations(instance, result.run_id)}
    for name, outcome in outcomes.items():
        echo(f"check {name}: {outcome}")
    return outcomes


def _check_line(evaluation) -> str:
    """The verdict as the CLI prints it: without the UI's label (the severity says it) and without the
    list of documents that failed in this run (the CLI prints each of those on its own ``failed:`` line)."""
    from colqwen_pipeline.defs.checks import NOT_INDEXED, WARNING_LABEL

    if evaluation.passed:
        return "passed"
    description = (evaluation.description or "did not pass").removeprefix(WARNING_LABEL).split(NOT_INDEXED)[0]
    return f"{evaluation.severity.value}: {description}"


def run_check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    """The run's check evaluations, from the event log: a failed step's result object leaves out the
    events it logged before failing, the instance has them all."""
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [entry.get_dagster_event().asset_check_evaluation_data for entry in entries]


def run_materializations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetMaterialization]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return [m for m in (entry.asset_materialization for entry in entries) if m is not None]


def _check_lines(evaluations: list[dg.AssetCheckEvaluation]) -> list[str]:
    """One line per document check that did not pass (the run's metadata has the details)."""
    return [
        f"check {e.check_name} ({e.partition}): {_check_line(e)}" for e in evaluations if not e.passed and e.partition
    ]


def _failed_documents(result: dg.ExecuteInProcessResult, span: Sequence[str]) -> dict[str, str]:
    """Per document, the one-line reason the run gives; a run that failed as a whole fails them all."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data.user_failure_data
        if data is not None and "failed" in data.metadata:
            return dict(cast(dict[str, str], data.metadata["failed"].value))
        error = event.step_failure_data.error
        while error and error.cause and not error.message.strip():
            error = error.cause
        reason = error.message.strip().splitlines()[-1] if error else "failed (see the run in the Dagster UI)"
        return dict.fromkeys(span, reason)
    return {}


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    return any(
        event.is_step_failure
        and event.step_failure_data.error is not None
        and "DagsterExecutionInterruptedError" in (event.step_failure_data.error.cls_name or "")
        for event in result.all_events
    )


def _indexed(settings: Settings, key: str) -> tuple[int, int]:
    """(pages, token vectors) of a document's current embeddings."""
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact

    try:
        artifact = EmbeddingArtifact.read(settings.embeddings_dir / key)
    except (OSError, ValueError, KeyError):
        return 0, 0
    return len(artifact.pages), artifact.total_tokens
