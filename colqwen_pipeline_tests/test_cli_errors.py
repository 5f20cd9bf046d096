"""What a user sees when the CLI cannot do what they asked (issue 16): one ``error:`` line with
the cause, the right exit code, no traceback, and no work started on a bad configuration.

Errors run the real console script in a subprocess from a scratch working directory (so no
``.env`` of the repository is read); searches of an indexed state call ``main`` in-process so
that the tiny model loads once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from colqwen_pipeline.cli import main
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import REPO, SAMPLES, free_port

ENTRY_POINT = str(Path(sys.executable).parent / "colqwen-pipeline")
EVAL_SET = str(REPO / "data" / "eval" / "queries.jsonl")


def run_cli(*arguments: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The installed ``colqwen-pipeline`` with COLQWEN_* taken only from ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_HOME"))}
    return subprocess.run(
        [ENTRY_POINT, *arguments], cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=300
    )


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture
def config(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """A working state: an inbox with one image, the tiny model, a state directory, the eval set."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    Image.new("RGB", (120, 160), "white").save(inbox / "page.png")
    return {
        "COLQWEN_HOME": str(tmp_path / "var"),
        "COLQWEN_INBOX": str(inbox),
        "COLQWEN_MODEL": str(tiny_model_dir),
        "COLQWEN_EVAL_SET": EVAL_SET,
    }


def assert_nothing_rendered(config: dict[str, str]) -> None:
    home = Path(config["COLQWEN_HOME"])
    assert not (home / "pages").exists() and not (home / "embeddings").exists()


def test_ingest_with_a_missing_model_directory_stops_before_rendering(tmp_path, config):
    run = run_cli("ingest", cwd=tmp_path, **config | {"COLQWEN_MODEL": str(tmp_path / "nope")})

    assert run.returncode == 2
    expected = (
        f"error: model directory {tmp_path / 'nope'} does not exist: set COLQWEN_MODEL to a model or adapter directory"
    )
    assert one_error_line(run) == expected
    assert "indexing" not in run.stdout
    assert_nothing_rendered(config)


def test_ingest_with_an_unreachable_milvus_server_stops_before_rendering(tmp_path, config):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    run = run_cli("ingest", cwd=tmp_path, **config | {"COLQWEN_MILVUS_URI": uri})

    assert run.returncode == 2
    line = one_error_line(run)
    assert line.startswith(f"error: cannot open Milvus at {uri}: ") and line.endswith(
        "(check COLQWEN_MILVUS_URI and COLQWEN_MILVUS_TOKEN)"
    )
    assert_nothing_rendered(config)


def test_ingest_from_another_folder_names_the_missing_relative_inbox(tmp_path, config):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = {k: v for k, v in config.items() if k != "COLQWEN_INBOX"}  # the default: ./data/inbox

    run = run_cli("ingest", cwd=elsewhere, **settings)

    assert run.returncode == 2
    expected = f"error: inbox data/inbox (relative to {elsewhere}) does not exist: create it or set COLQWEN_INBOX"
    assert one_error_line(run) == expected


@pytest.mark.parametrize("command", [["ingest"], ["search", "invoice"], ["evaluate"], ["serve"]])
def test_a_bad_setting_value_is_one_line_naming_the_variable_in_every_command(tmp_path, config, command):
    run = run_cli(*command, cwd=tmp_path, **config | {"COLQWEN_BATCH_SIZE": "abc"})

    assert run.returncode == 2
    assert one_error_line(run) == (
        "error: bad setting COLQWEN_BATCH_SIZE='abc': "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_several_bad_settings_from_a_dotenv_file_are_all_named(tmp_path, config):
    (tmp_path / ".env").write_text("COLQWEN_DPI=9000\nCOLQWEN_PRECISION=fp8\n")

    run = run_cli("search", "invoice", cwd=tmp_path, **config)

    assert run.returncode == 2
    line = one_error_line(run)
    assert "COLQWEN_DPI='9000': Input should be less than or equal to 600" in line
    assert "COLQWEN_PRECISION='fp8': Input should be 'auto', 'bf16', 'fp32', '4bit' or '8bit'" in line


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_query_is_refused(tmp_path, config, query):
    run = run_cli("search", query, cwd=tmp_path, **config)

    assert run.returncode == 2 and one_error_line(run) == "error: query is empty"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_top_k_below_one_is_refused_through_the_entry_point(tmp_path, config, value):
    run = run_cli("search", "invoice", "--top-k", value, cwd=tmp_path, **config)

    assert run.returncode == 2
    assert f"argument --top-k: must be at least 1, not {value}" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("command", [["search", "invoice"], ["evaluate"]])
def test_search_and_evaluate_on_an_empty_index_say_how_to_fill_it(tmp_path, config, command):
    run = run_cli(*command, cwd=tmp_path, **config)

    assert run.returncode == 1
    home, inbox = config["COLQWEN_HOME"], config["COLQWEN_INBOX"]
    expected = (
        f"error: the index at {home}/milvus.db is empty: put documents in {inbox} and run `colqwen-pipeline ingest`"
    )
    assert one_error_line(run) == expected
    assert "model loaded" not in run.stderr  # said before any model load
    assert "top 0 pages" not in run.stdout and "nDCG" not in run.stdout


def test_help_explains_the_tool_its_paths_and_the_defaults(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    search = run_cli("search", "--help", cwd=tmp_path)

    assert top.returncode == 0 and "and more as they land" not in top.stdout
    assert "relative to the working directory" in top.stdout and "default ./var" in top.stdout
    assert "pages to return (default: 5)" in " ".join(search.stdout.split())
    assert "file name, path in the inbox or document key" in " ".join(search.stdout.split())


def test_rasterize_says_one_page_not_one_pages(tmp_path):
    run = run_cli("rasterize", str(SAMPLES / "scanned_invoice.jpg"), "--out", str(tmp_path / "out"), cwd=tmp_path)

    assert run.returncode == 0 and run.stdout.strip() == f"1 page written to {tmp_path / 'out'}"


# -- an indexed state: ingest once through the entry point, search in-process ------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """sub/scanned_invoice.jpg and chart.png, ingested by ``colqwen-pipeline ingest``."""
    root = tmp_path_factory.mktemp("indexed")
    inbox = root / "inbox"
    (inbox / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "scanned_invoice.jpg", inbox / "sub" / "scanned_invoice.jpg")
    Image.new("RGB", (200, 150), "lightblue").save(inbox / "chart.png")
    env = {"COLQWEN_HOME": str(root / "var"), "COLQWEN_INBOX": str(inbox), "COLQWEN_MODEL": str(tiny_model_dir)}
    run = run_cli("ingest", cwd=root, **env)
    assert run.returncode == 0, run.stderr
    assert "done: 2 documents, 2 pages, " in run.stdout
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("COLQWEN_MILVUS_URI", raising=False)
        patch.delenv("COLQWEN_REDIS_URL", raising=False)
        yield env


def search_json(capsys, *arguments: str) -> dict:
    capsys.readouterr()
    assert main(["search", "invoice", "--json", *arguments]) == 0
    return json.loads(capsys.readouterr().out)


INVOICE_KEY = document_key("sub/scanned_invoice.jpg")


@pytest.mark.parametrize(
    "name", ["scanned_invoice.jpg", "sub/scanned_invoice.jpg", INVOICE_KEY], ids=["file", "path", "key"]
)
def test_doc_accepts_the_file_name_the_inbox_path_or_the_key(indexed, capsys, name):
    everything = search_json(capsys)
    assert {r["doc_id"] for r in everything["results"]} == {INVOICE_KEY, document_key("chart.png")}

    only = search_json(capsys, "--doc", name)

    assert [r["document"] for r in only["results"]] == ["sub/scanned_invoice.jpg"]


def test_doc_that_matches_nothing_lists_the_indexed_documents(indexed, capsys):
    capsys.readouterr()
    assert main(["search", "invoice", "--doc", "invoice.pdf"]) == 2

    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: --doc 'invoice.pdf' is no indexed document; indexed: chart.png ({document_key('chart.png')}), "
        f"sub/scanned_invoice.jpg ({INVOICE_KEY})"
    )


def test_results_carry_the_model_fingerprint_and_the_random_weights_marker(indexed, capsys):
    marker = search_json(capsys)["model"]
    assert set(marker) == {"fingerprint", "family", "dim", "random_weights"}
    assert (marker["family"], marker["dim"]) == ("colqwen2.5", 128)
    assert marker["random_weights"] is True and marker["fingerprint"].startswith("tiny-colqwen2.5@")

    assert main(["search", "invoice", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "top 1 page for 'invoice':"
    assert lines[-1] == f"model: {marker['fingerprint']} (RANDOM TEST WEIGHTS: the scores mean nothing)"


@pytest.mark.slow  # two subprocess ingests and a search
def test_search_after_every_document_was_removed_says_the_index_is_empty(tmp_path, config):
    first = run_cli("ingest", cwd=tmp_path, **config)
    assert first.returncode == 0, first.stderr
    assert "done: 1 document, 1 page, " in first.stdout  # not "1 documents, 1 pages"
    (Path(config["COLQWEN_INBOX"]) / "page.png").unlink()
    assert run_cli("ingest", cwd=tmp_path, **config).returncode == 0  # prunes the vanished document

    run = run_cli("search", "invoice", cwd=tmp_path, **config)

    assert run.returncode == 1
    assert one_error_line(run).startswith(f"error: the index at {config['COLQWEN_HOME']}/milvus.db is empty: ")
