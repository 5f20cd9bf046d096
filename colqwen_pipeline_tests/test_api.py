"""The public Python API, ``from colqwen_pipeline import Index``, for real: the tiny model, a Milvus Lite
file and the CLI's Dagster ingest, in a state directory that is not the environment's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import REPO, SAMPLES

SAMPLE = "pump_maintenance_manual.pdf"
PLAIN_TEXT = "plain text, not a document this pipeline reads (PDF, Office documents, images)"


def test_index_adds_searches_as_the_cli_does_and_removes_into_the_trash(state, tmp_path, monkeypatch, capsys) -> None:
    """``state`` points COLQWEN_HOME elsewhere: everything must land under the Index's own home."""
    from colqwen_pipeline import Index
    from colqwen_pipeline.cli import main
    from colqwen_pipeline.cli.search_scope import EmptyIndex

    outside = tmp_path / "mine"
    outside.mkdir()
    (outside / SAMPLE).write_bytes((SAMPLES / SAMPLE).read_bytes())
    (outside / "notes.pdf").write_bytes(b"Meeting notes\nThursday: budget")
    home = tmp_path / "index"
    dagster_home_before = os.environ.get("DAGSTER_HOME")

    index = Index(home=home)
    summary = index.add([outside / SAMPLE, outside / "notes.pdf"])
    assert (summary.documents, summary.pages) == (1, 3)
    assert list(summary.failed) == [document_key("notes.pdf")]
    assert summary.failed[document_key("notes.pdf")] == f"notes.pdf: {PLAIN_TEXT}"
    assert (home / "inbox" / SAMPLE).read_bytes() == (SAMPLES / SAMPLE).read_bytes()
    assert (outside / SAMPLE).exists()  # copied, not moved
    assert not (state.home_dir / "milvus.db").exists()  # the run wrote where the Index says, not COLQWEN_HOME
    runs = dg.DagsterInstance.from_config(str(home / "dagster")).get_run_records()
    assert [record.dagster_run.tags["colqwen/trigger"] for record in runs] == ["api"]
    assert os.environ.get("DAGSTER_HOME") == dagster_home_before  # the Index's own, for its calls only

    other = Index(home=tmp_path / "other")  # a second home in the same process keeps its runs apart
    assert list(other.add([outside / "notes.pdf"]).failed) == [document_key("notes.pdf")]
    assert len(dg.DagsterInstance.from_config(str(tmp_path / "other" / "dagster")).get_run_records()) == 1
    assert len(dg.DagsterInstance.from_config(str(home / "dagster")).get_run_records()) == 1

    hits = index.search("pump maintenance", top_k=2)
    assert [(hit.document, hit.doc_id) for hit in hits] == [(SAMPLE, document_key(SAMPLE))] * 2
    assert hits[0].score >= hits[1].score
    monkeypatch.setenv("COLQWEN_HOME", str(home))
    monkeypatch.setenv("COLQWEN_INBOX", str(home / "inbox"))
    capsys.readouterr()
    assert main(["search", "pump maintenance", "--top-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == [hit.as_dict() for hit in hits]

    again = index.add([outside / SAMPLE])  # unchanged: nothing copied over it, no run
    assert again.runs == 0 and again.failed == {}

    trashed = index.remove(SAMPLE)  # by file name; a doc_id or a path work too
    assert trashed is not None and trashed.file.read_bytes() == (SAMPLES / SAMPLE).read_bytes()
    assert not (home / "inbox" / SAMPLE).exists()
    with pytest.raises(EmptyIndex, match="is empty"):
        index.search("pump maintenance")


def test_a_changed_file_of_the_same_name_keeps_the_old_version_in_the_trash(state, tmp_path) -> None:
    from colqwen_pipeline.api import Index
    from colqwen_pipeline.service.trash import Trash

    index = Index(home=tmp_path / "index")
    old = index.settings.inbox / "notes.txt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"first version")
    new = tmp_path / "notes.txt"
    new.write_bytes(b"second version")

    index._into_inbox(new)  # what add() does before it ingests
    assert old.read_bytes() == b"second version"
    assert [e.file.read_bytes() for e in Trash(index.settings).entries()] == [b"first version"]

    (tmp_path / "scans" / "2025").mkdir(parents=True)
    (tmp_path / "scans" / "2025" / "a.png").write_bytes(b"png")
    assert index._into_inbox(tmp_path / "scans") == index.settings.inbox / "scans"  # a folder keeps its tree
    assert (index.settings.inbox / "scans" / "2025" / "a.png").read_bytes() == b"png"
    inside = index.settings.inbox / "notes.txt"
    assert index._into_inbox(inside) == inside  # already in the inbox: left where it is


def test_documents_are_named_by_doc_id_path_or_unambiguous_file_name(state, tmp_path) -> None:
    from colqwen_pipeline.api import Index
    from colqwen_pipeline.cli.search_scope import UnknownDocument

    index = Index(home=tmp_path / "index")
    for folder in ("2024", "2025"):
        (index.settings.inbox / folder).mkdir(parents=True)
        (index.settings.inbox / folder / "report.pdf").write_bytes(b"%PDF-1.7")
    key = document_key("2025/report.pdf")
    assert index.doc_id(key) == key
    assert index.doc_id(index.settings.inbox / "2025" / "report.pdf") == key
    with pytest.raises(UnknownDocument, match="names 2 documents"):
        index.doc_id("report.pdf")
    with pytest.raises(UnknownDocument, match="no such document"):
        index.doc_id("missing.pdf")


def test_index_takes_only_the_settings_its_runs_receive(tmp_path) -> None:
    from colqwen_pipeline.api import OVERRIDABLE, Index
    from colqwen_pipeline.defs.resources import ColQwenResource

    assert set(OVERRIDABLE) == set(ColQwenResource.model_fields) - {"home", "inbox"}
    with pytest.raises(TypeError, match="redis_url"):
        Index(home=tmp_path, redis_url="redis://x")
    assert Index(home=tmp_path, batch_size=2).settings.batch_size == 2
    assert Index(home=tmp_path).settings.inbox == tmp_path / "inbox"


def test_importing_the_api_stays_cheap() -> None:
    heavy = ("torch", "dagster", "fastapi", "pymilvus", "transformers")
    code = f"import sys, colqwen_pipeline; colqwen_pipeline.Index; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
