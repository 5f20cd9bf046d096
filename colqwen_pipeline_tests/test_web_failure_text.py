"""Failure text a user can act on: one sentence naming the file and what it is, the same in the CLI's
lines, the web page's document list and Dagster's record of the failure; and the limit that stopped a
renderer, named with its setting."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from colqwen_pipeline.documents.sniff import what_else
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import SAMPLES

READS = "not a document this pipeline reads (PDF, Office documents, images)"


def test_one_sentence_reaches_the_cli_the_web_page_and_dagster(state, monkeypatch, capsys) -> None:
    from colqwen_pipeline.cli import main
    from colqwen_pipeline.defs.instance import dagster_instance, failed_since_change
    from colqwen_pipeline.inbox import inbox_files
    from colqwen_pipeline.service import html
    from colqwen_pipeline.service.uploads import SensorIndexer, document_statuses

    monkeypatch.setenv("DAGSTER_HOME", str(state.dagster_home))  # restored after the test
    state.dagster_home.mkdir(parents=True)
    (state.inbox / "notes.pdf").write_bytes(b"Meeting notes\nThursday: budget, hiring")
    (state.inbox / "reports").mkdir()
    (state.inbox / "reports" / "q3.pdf").write_bytes(b"<!DOCTYPE html><html><body>Q3</body></html>")
    expected = {
        document_key("notes.pdf"): f"notes.pdf: plain text, {READS}",
        document_key("reports/q3.pdf"): f"reports/q3.pdf: a web page (HTML), {READS}",  # the path once
    }

    Image.new("RGB", (200, 260), "white").save(state.inbox / "good.png")  # indexed: the run's checks judge it
    monkeypatch.setenv("COLQWEN_EVAL_SET", str(state.home_dir / "no-eval-set.jsonl"))  # retrieval_quality: WARN

    assert main(["ingest"]) == 1
    printed = capsys.readouterr()
    failed_lines = [line for line in printed.err.splitlines() if line.startswith("failed")]
    assert sorted(failed_lines) == sorted(f"failed: {sentence}" for sentence in expected.values())
    assert "check retrieval_quality: WARN" in printed.out  # a check that does not pass prints its description
    assert (printed.out + printed.err).count("notes.pdf") == 1, printed  # once, not again in that line

    recorded = failed_since_change(dagster_instance(state), inbox_files(state.inbox))  # the partitions' cause
    assert recorded == expected

    listed = {d["doc_id"]: d for d in document_statuses(state, set(), SensorIndexer())}
    assert {doc_id: d["reason"] for doc_id, d in listed.items() if d["status"] == "failed"} == expected
    row = html.document_row(listed[document_key("notes.pdf")])
    assert 'data-status="failed"' in row and f"Failed: notes.pdf: plain text, {READS}" in row


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (b"Meeting notes\nThursday", "plain text"),
        (b"\xef\xbb\xbf  <!doctype HTML>", "a web page (HTML)"),
        (b"<?xml version='1.0'?>", "an XML file"),
        (b"{\\rtf1\\ansi", "an RTF file (save it as DOCX or PDF)"),
        ("Préface ".encode()[:3], "plain text"),  # a character cut at the end of the sniffed bytes
        (b"%\xe2\xe3\xcf\xd3\nthis is a letter", "an unknown binary format"),
        (b"\x00\x01\x02 binary", "an unknown binary format"),
    ],
)
def test_a_refused_file_is_said_to_be_what_it_is(head: bytes, said: str) -> None:
    assert what_else(head) == said


def test_error_pages_say_what_did_not_happen() -> None:
    from colqwen_pipeline.service.html import error_title

    assert error_title("/upload", 415) == "The document was not added"
    assert error_title("/documents/a.pdf-1/delete", 503) == "The document was not removed"
    assert error_title("/documents/a.pdf-1/restore", 409) == "The document was not restored"
    assert error_title("/view/x/1", 404) == "Not found"


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice not installed")
def test_an_office_file_over_the_memory_limit_says_which_limit(state, tmp_path) -> None:
    """LibreOffice dies by abort() when an allocation fails under the cap (exit 134): that is the memory
    limit, not "produced no PDF"."""
    from colqwen_pipeline.documents import rasterize_document
    from colqwen_pipeline.documents.manifest import DocumentError

    # 400 MB: soffice starts and aborts mid-conversion (134); at 300 MB it sometimes cannot start at all and exits
    # with a plain error code, and from 500 MB this memo converts (measured side by side, 2 runs each)
    settings = state.model_copy(update={"render_memory_mb": 400})
    with pytest.raises(DocumentError) as refused:
        rasterize_document(SAMPLES / "quarterly_memo.docx", tmp_path / "out", settings)
    assert str(refused.value) == (
        "quarterly_memo.docx: renderer exceeded 400 MB of memory (raise COLQWEN_RENDER_MEMORY_MB if you trust the file)"
    )


def test_a_device_typo_stops_a_command_before_any_work(state, monkeypatch, capsys) -> None:
    from colqwen_pipeline.cli import main

    monkeypatch.setenv("COLQWEN_DEVICE", "gpu")
    assert main(["search", "pump"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: bad setting COLQWEN_DEVICE='gpu': must be auto, cpu, cuda, cuda:N (a GPU's number) or mps"
    ]
    monkeypatch.setenv("COLQWEN_DEVICE", "cuda:1")
    from colqwen_pipeline.settings import Settings

    assert Settings().device == "cuda:1"


def test_a_relative_eval_set_that_is_not_there_names_the_working_directory(state, monkeypatch, tmp_path, capsys):
    from colqwen_pipeline.cli import main

    monkeypatch.delenv("COLQWEN_EVAL_SET", raising=False)
    monkeypatch.chdir(tmp_path)  # not the repository root: data/eval/queries.jsonl is not here
    assert main(["evaluate"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: data/eval/queries.jsonl: evaluation set not found, relative to the working ")
    assert f"directory {tmp_path} (run from the repository root, or set COLQWEN_EVAL_SET" in error
