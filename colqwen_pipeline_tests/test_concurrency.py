"""Several processes share one Milvus Lite file: two ingests and a search at once all succeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import add_sample

pytestmark = pytest.mark.slow


def cli(*arguments: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "colqwen_pipeline.cli", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_two_ingests_and_a_search_at_once_share_the_lite_file(state):
    first = add_sample(state, "pump_maintenance_manual.pdf")
    second = add_sample(state, "acme_annual_report_2025.pdf")
    add_sample(state, "scanned_invoice.jpg")
    setup = cli("ingest", str(state.inbox / "scanned_invoice.jpg"))  # something to search meanwhile
    assert setup.wait(timeout=300) == 0, setup.communicate()[1]

    processes = [cli("ingest", str(first)), cli("ingest", str(second)), cli("search", "invoice", "--json")]
    outputs = [p.communicate(timeout=600) for p in processes]

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    assert json.loads(outputs[2][0])["results"], "the search saw the document indexed before"
    index = stages.make_index(state)
    for path in (first, second):
        key = document_key(path.name)
        assert index.count_tokens(key) == EmbeddingArtifact.read(state.embeddings_dir / key).total_tokens
