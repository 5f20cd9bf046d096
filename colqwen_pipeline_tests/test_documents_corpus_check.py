"""scripts/corpus_check.py on a small folder of good and bad PDFs, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from colqwen_pipeline_tests.conftest import REPO
from colqwen_pipeline_tests.test_documents import encrypted_pdf, make_pdf, xobject_bomb
from colqwen_pipeline_tests.test_documents_partial import _page, kids_with_a_hole, two_page_pdf

SCRIPT = REPO / "scripts" / "corpus_check.py"


def make_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "nested").mkdir(parents=True)
    xobject_bomb(folder / "a_slow.pdf", depth=30, fan=2)  # renders "forever": only a time limit stops it
    (folder / "bad.pdf").write_bytes(b"%PDF-1.7\nnot really a PDF")
    make_pdf(folder / "nested" / "good.pdf", pages=5)
    encrypted_pdf(tmp_path, "s3cret").rename(folder / "secret.pdf")
    (folder / "notes.txt").write_text("not a PDF: skipped")
    kids_with_a_hole(tmp_path).rename(folder / "hole.pdf")  # page 2 of 3 renders nowhere: partial
    (folder / "tree.pdf").write_bytes(two_page_pdf(_page(7, kind=b"/Pages")))  # page 2 only in poppler
    return folder


def corpus_check(folder: Path, *options: str) -> tuple[int, dict]:
    cmd = [sys.executable, str(SCRIPT), str(folder), "--json", "--pages", "2", *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_every_pdf_is_rendered_or_fails_with_a_grouped_clear_cause(tmp_path: Path) -> None:
    code, summary = corpus_check(make_corpus(tmp_path), "--timeout", "1.5")

    assert code == 0
    assert (summary["files"], summary["rendered"], summary["rendered_pages"]) == (6, 3, 5)
    assert (summary["partial"], summary["skipped_pages"]) == (1, 1)
    assert list(summary["partials"]) == [str(tmp_path / "corpus" / "hole.pdf")]
    assert (summary["failed_clear"], summary["failed_unclear"], summary["crashed"], summary["hung"]) == (3, 0, 0, 0)
    causes = summary["causes"]
    assert (
        causes["renderer exceeded N.N s (raise COLQWEN_RENDER_TIMEOUT_S if you trust the file)"] == 1
    )  # numbers are masked so that alike causes group
    assert causes["encrypted PDF: no password configured (set COLQWEN_PDF_PASSWORD)"] == 1
    assert any(c.startswith("cannot render PDF: pypdfium2:") for c in causes)
    # bad.pdf and secret.pdf: pdfium refuses, pdftoppm is tried and refuses too; hole.pdf and tree.pdf:
    # pdfium fails page 2, pdftoppm is tried for it (and draws it in tree.pdf)
    assert summary["fallback"] == {"first_renderer_refused": 4, "rescued_by_fallback": 1}
    assert summary["rescued"] == [str(tmp_path / "corpus" / "tree.pdf")]


def test_a_file_past_the_watchdog_counts_as_hung_and_the_rest_still_run(tmp_path: Path) -> None:
    # The watchdog fires before the renderer's own limit: that is what a real hang looks like from outside.
    code, summary = corpus_check(make_corpus(tmp_path), "--timeout", "30", "--grace", "-28")

    assert code == 1
    assert summary["hung"] == 1 and summary["problems"][0]["file"].endswith("a_slow.pdf")
    assert (summary["rendered"], summary["failed_clear"]) == (3, 2)
