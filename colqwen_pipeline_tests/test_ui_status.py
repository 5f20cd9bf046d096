"""What the Dagster UI says after real runs (issue 16 items 1, 4, 5, 6), read from a real
``dagster-webserver`` over the runs' instance through its GraphQL API (the queries the UI's check
tags and sidebar use):
a broken document fails alone and no check "fails" with it, WARN outcomes read as warnings, a check
with nothing to judge passes saying so, and every kind of run carries a ``colqwen/trigger`` tag."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from colqwen_pipeline.definitions import RESOURCES, defs
from colqwen_pipeline.defs.checks import WARNING_LABEL
from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import add_sample
from colqwen_pipeline_tests.dagster_processes import GraphQL, webserver

CHECKS_QUERY = """{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status partition runId
        evaluation { severity success description metadataEntries { label } } } } } } } }"""
INVOICE = "scanned_invoice.jpg"


@pytest.fixture
def ui(state, instance: dg.DagsterInstance, tmp_path: Path) -> Iterator[GraphQL]:
    """The webserver over ``instance`` (``instance_for_test`` points DAGSTER_HOME at it)."""
    with webserver(tmp_path) as server:
        yield server


def check_statuses(ui: GraphQL) -> dict[str, dict]:
    """check name -> the execution the UI shows for it (status, partition, evaluation)."""
    nodes = ui.graphql(CHECKS_QUERY)["assetNodes"]
    return {
        check["name"]: check["executionForLatestMaterialization"]
        for node in nodes
        for check in node["assetChecksOrError"].get("checks", [])
    }


def ingest_again(settings, instance: dg.DagsterInstance) -> Any:
    """An ingest that follows another one in the same test. Dagster's UI shows a check execution of
    an earlier materialisation only if the execution row's ``create_timestamp`` is later than that
    materialisation. SQLite stores the timestamp to the whole second, so a re-run that starts within
    the second of the previous materialisation shows no execution (Dagster's behaviour, seen in CI
    once); the tests wait that second out."""
    time.sleep(1.0)
    return ingest(settings, instance=instance, echo=lambda _: None)


def step_failure(instance: dg.DagsterInstance, run_id: str):
    entry = next(e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_failure)
    return entry.dagster_event.step_failure_data.user_failure_data


def test_a_broken_file_fails_its_run_alone_and_no_check_fails_with_it(eval_state, instance, ui):
    """Item 1: an empty broken.pdf dropped beside indexed documents."""
    add_sample(eval_state, INVOICE)
    ingest(eval_state, instance=instance, echo=lambda _: None)
    (eval_state.inbox / "broken.pdf").write_bytes(b"")
    broken = document_key("broken.pdf")

    summary = ingest_again(eval_state, instance)

    run = instance.get_runs(limit=1)[0]
    assert run.is_failure and summary.failed == {broken: "broken.pdf: empty file"}
    failure = step_failure(instance, run.run_id)
    assert failure.description == "1 of 1 document(s) failed: broken.pdf: empty file"  # the run was for it alone
    observed = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("page_images"), asset_partitions=[broken]), limit=1
    ).records
    assert [r.asset_observation.description for r in observed] == ["broken.pdf: empty file"]  # on its partition
    statuses = check_statuses(ui)
    assert set(statuses) == {
        "pages_complete",
        "embedding_dimension",
        "throughput",
        "retrieval_quality",
        "index_fidelity",
        "collection_consistency",
    }
    assert {name: s["status"] for name, s in statuses.items()} == dict.fromkeys(statuses, "SUCCEEDED")
    assert all(s["runId"] == run.run_id for s in statuses.values())  # this run judged them, none left planned
    for name in ("retrieval_quality", "index_fidelity", "collection_consistency"):
        evaluation = statuses[name]["evaluation"]
        assert "(as last checked: the index has not changed since run " in evaluation["description"], evaluation
        assert evaluation["description"].endswith(
            f"; not indexed: {broken} (failed in this run, see the run's failure)"
        )
        assert "failed_documents" in {m["label"] for m in evaluation["metadataEntries"]}
    assert statuses["embedding_dimension"]["evaluation"]["description"] == (
        "nothing to judge: no document was embedded in this run"
    )
    assert statuses["throughput"]["evaluation"]["description"] == (
        "nothing to judge: no page went through the model in this run"
    )


def test_warn_outcomes_say_warning_and_an_unchanged_run_judges_nothing(state, instance, monkeypatch, ui):
    """Item 5: a WARN check that does not pass reads as a warning; the next run, whose pages all
    come from the cache, passes that check saying there was nothing to judge."""
    monkeypatch.setenv("COLQWEN_MIN_PAGES_PER_S_CPU", "1000000")
    add_sample(state, INVOICE)
    key = document_key(INVOICE)
    lines: list[str] = []

    ingest(state, instance=instance, echo=lines.append)

    throughput = check_statuses(ui)["throughput"]
    assert throughput["status"] == "FAILED" and throughput["partition"] == key
    assert throughput["evaluation"]["severity"] == "WARN" and not throughput["evaluation"]["success"]
    assert throughput["evaluation"]["description"].startswith(WARNING_LABEL)
    assert (
        f"    check throughput ({key}): WARN: " + throughput["evaluation"]["description"].removeprefix(WARNING_LABEL)
        in lines
    )  # the CLI says WARN once

    time.sleep(1.0)  # see ingest_again
    rerun = defs.resolve_job_def("ingest_job").execute_in_process(  # an unchanged run (the CLI launches none)
        instance=instance, partition_key=key, resources=RESOURCES
    )

    assert rerun.success
    again = check_statuses(ui)["throughput"]
    assert again["status"] == "SUCCEEDED" and again["partition"] is None
    assert again["evaluation"]["description"] == "nothing to judge: no page went through the model in this run"


def test_retrieval_quality_puts_the_key_fact_in_its_first_80_characters(eval_state, instance, ui):
    """Item 4: with the random-weight model, the UI's cut-off explanation still says so."""
    add_sample(eval_state, INVOICE)

    ingest(eval_state, instance=instance, echo=lambda _: None)

    description = check_statuses(ui)["retrieval_quality"]["evaluation"]["description"]
    assert "RANDOM-WEIGHT TEST MODEL, scores near chance" in description[:80]
    assert "nDCG@5" in description


def test_every_kind_of_run_carries_a_trigger_tag(state, instance):
    """Item 6: CLI, UI launch of ingest_job, and the asset graph's Materialize button (``__ASSET_JOB``)."""
    add_sample(state, INVOICE)
    key = document_key(INVOICE)
    ingest(state, instance=instance, echo=lambda _: None)
    ingest_job = defs.resolve_job_def("ingest_job")
    asset_job = defs.resolve_implicit_global_asset_job_def()

    launched = ingest_job.execute_in_process(instance=instance, partition_key=key, resources=RESOURCES)
    clicked = asset_job.execute_in_process(instance=instance, partition_key=key, resources=RESOURCES)

    assert launched.success and clicked.success
    runs = [(run.job_name, run.tags.get("colqwen/trigger")) for run in instance.get_runs()]  # newest first
    assert runs == [("__ASSET_JOB", "ui"), ("ingest_job", "ui"), ("ingest_job", "cli")]


def test_a_partial_document_keeps_its_warning_on_top_in_every_run(state, instance, ui):
    """Item 5: the UI shows a check's latest evaluation, so a run logs its documents worst last, and
    an unchanged partial document is judged again rather than left to "nothing to judge"."""
    from colqwen_pipeline_tests.test_documents_partial import kids_with_a_hole

    (state.inbox / "hole.pdf").write_bytes(kids_with_a_hole(state.inbox.parent).read_bytes())
    add_sample(state, INVOICE, "zz_invoice.jpg")  # rendered after hole.pdf: its pass must not hide the warning
    hole = document_key("hole.pdf")

    for attempt in range(2):
        if attempt:
            ingest_again(state, instance)
        else:
            ingest(state, instance=instance, echo=lambda _: None)

        pages = check_statuses(ui)["pages_complete"]
        assert (pages["status"], pages["partition"]) == ("FAILED", hole)
        assert pages["evaluation"]["severity"] == "WARN"
        assert pages["evaluation"]["description"].startswith(WARNING_LABEL + "2 of 3 pages rendered; skipped: 2 (")
