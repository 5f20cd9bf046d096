"""Headless ingest: register inbox files as partitions and materialise them in this process,
on the Dagster instance under the state directory (the UI shows these runs).

One process means one model load for every document of the call, and the only opener of the
Milvus Lite file."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from colqwen_pipeline.inbox import document_key, inbox_files, mass_removal
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
PARTITIONS = "documents"


@dataclass
class IngestSummary:
    documents: int = 0
    pages: int = 0
    tokens: int = 0  # token vectors indexed
    removed: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # partition key -> one-line reason
    checks: dict[str, str] = field(default_factory=dict)  # collection check -> "passed" or "WARN/ERROR: why"


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance under the state directory (DAGSTER_HOME wins when set)."""
    if not os.environ.get("DAGSTER_HOME"):
        home = settings.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        project_yaml = Path(__file__).resolve().parent.parent / "dagster.yaml"
        if project_yaml.exists() and not (home / "dagster.yaml").exists():
            shutil.copy(project_yaml, home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


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
) -> IngestSummary:
    """Materialise the selected documents (all of the inbox by default); prune vanished ones."""
    from colqwen_pipeline.definitions import RESOURCES
    from colqwen_pipeline.defs.assets import ASSETS
    from colqwen_pipeline.defs.checks import DOCUMENT_CHECKS

    started = time.perf_counter()
    instance = instance or dagster_instance(settings)
    documents = select_documents(settings, paths)
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    instance.add_dynamic_partitions(PARTITIONS, [k for k in documents if k not in known])
    summary = IngestSummary()
    if not paths:
        confirmed = confirm_removals or settings.allow_mass_removal
        summary.removed = prune(settings, instance, set(documents), known, echo, confirmed)
    for number, (key, path) in enumerate(documents.items(), 1):
        echo(f"[{number}/{len(documents)}] {path.relative_to(settings.inbox)}")
        result = dg.materialize(
            [*ASSETS, *DOCUMENT_CHECKS],
            partition_key=key,
            instance=instance,
            resources=RESOURCES,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        if result.success:
            pages = _metadata(result, "page_images", "pages")
            tokens = _metadata(result, "milvus_collection", "tokens_indexed")
            summary.documents += 1
            summary.pages += pages
            summary.tokens += tokens
            echo(f"    ok: {pages} pages, {tokens} token vectors")
        else:
            summary.failed[key] = _failure(result) or "failed (see the run in the Dagster UI)"
            echo(f"    FAILED: {summary.failed[key]}")
        for line in _check_lines(result):
            echo(f"    {line}")
    summary.checks = collection_checks(instance, echo)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


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
    from colqwen_pipeline import stages

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
    """Once per ingest, after every document: the checks that judge the whole collection."""
    from colqwen_pipeline.definitions import RESOURCES
    from colqwen_pipeline.defs.assets import ASSETS
    from colqwen_pipeline.defs.checks import COLLECTION_CHECKS

    result = dg.materialize(
        [*ASSETS, *COLLECTION_CHECKS],
        selection=dg.AssetSelection.checks(*COLLECTION_CHECKS),
        instance=instance,
        resources=RESOURCES,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    outcomes = {e.check_name: _check_line(e) for e in result.get_asset_check_evaluations()}
    for name, outcome in outcomes.items():
        echo(f"check {name}: {outcome}")
    return outcomes


def _check_line(evaluation) -> str:
    if evaluation.passed:
        return "passed"
    return f"{evaluation.severity.value}: {evaluation.description or 'did not pass'}"


def _check_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """One line per document check that did not pass (the run's metadata has the details)."""
    return [f"check {e.check_name}: {_check_line(e)}" for e in result.get_asset_check_evaluations() if not e.passed]


def _metadata(result: dg.ExecuteInProcessResult, asset: str, name: str) -> int:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() == asset and name in materialization.metadata:
            return int(materialization.metadata[name].value)
    return 0


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause and not error.message.strip():
                error = error.cause
            description = event.step_failure_data.user_failure_data
            if description and description.description:
                return description.description
            return error.message.strip().splitlines()[-1]
    return ""
