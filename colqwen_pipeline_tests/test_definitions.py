"""The Definitions load, and the asset graph is what the README describes."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

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


def test_dagster_validates_the_workspace():
    dagster = REPO / ".venv" / "bin" / "dagster"
    command = [str(dagster) if dagster.exists() else "dagster", "definitions", "validate", "-w", "workspace.yaml"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
