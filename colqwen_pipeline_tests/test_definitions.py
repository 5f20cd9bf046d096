"""The Definitions load, and the asset graph is what the README describes."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from colqwen_pipeline.definitions import defs
from colqwen_pipeline_tests.conftest import REPO


def test_asset_graph_is_the_four_stages_in_order():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"raw_documents", "page_images", "page_embeddings", "milvus_collection"}
    upstream = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert upstream == {
        "raw_documents": [],
        "page_images": ["raw_documents"],
        "page_embeddings": ["page_images"],
        "milvus_collection": ["page_embeddings"],
    }
    for key in graph.get_all_asset_keys():
        assert isinstance(graph.get(key).partitions_def, dg.DynamicPartitionsDefinition)
    assert graph.get(dg.AssetKey("page_embeddings")).pools == {"gpu"}


def test_definitions_load_without_importing_torch():
    code = "import sys, colqwen_pipeline.definitions; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


def dagster_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    dagster = REPO / ".venv" / "bin" / "dagster"
    command = [str(dagster) if dagster.exists() else "dagster", *arguments, "-w", "workspace.yaml"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def listed(kind: str, tmp_path) -> set[str]:
    """Names the Dagster CLI lists for ``kind`` (job, schedule, sensor) in our workspace."""
    found = dagster_cli(kind, "list", env={**os.environ, "DAGSTER_HOME": str(tmp_path)})
    assert found.returncode == 0, found.stdout + found.stderr
    prefix = f"{kind.capitalize()}: "
    return {line.removeprefix(prefix).split(" [")[0] for line in found.stdout.splitlines() if line.startswith(prefix)}


@pytest.mark.slow  # the dagster CLI in subprocesses
def test_dagster_validates_the_workspace_and_finds_the_projects_jobs(tmp_path):
    validated = dagster_cli("definitions", "validate")
    listed_jobs = dagster_cli("job", "list")

    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Validation successful for code location colqwen_pipeline.definitions" in validated.stdout + validated.stderr
    assert listed_jobs.returncode == 0, listed_jobs.stdout + listed_jobs.stderr
    jobs = {line.removeprefix("Job: ") for line in listed_jobs.stdout.splitlines() if line.startswith("Job: ")}
    assert jobs == {"__ASSET_JOB", "ingest_job", "remove_documents_job"}
    # The automation a deployment relies on: the nightly reindex and the inbox sensor.
    assert listed("schedule", tmp_path) == {"nightly_reindex"}
    assert listed("sensor", tmp_path) == {"inbox_sensor"}
