"""Damaged PDFs that real readers still open: header-less files, page trees one renderer rejects,
pages neither renderer can draw (partial documents), built here byte by byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from colqwen_pipeline.defs.runner import ingest, run_check_evaluations, run_materializations
from colqwen_pipeline.documents import DocumentError, Manifest, rasterize_document
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.test_documents import _stream, assert_refused, raw_pdf, render, settings

FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _page(contents: int, kind: bytes = b"/Page") -> bytes:
    return (
        b"<< /Type %s /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
        % (kind, contents)
    )


def _text(words: bytes) -> bytes:
    return _stream(b"", b"BT /F1 48 Tf 72 600 Td (%s) Tj ET 20 w 0 0 m 600 700 l S" % words)


def two_page_pdf(second: bytes, *, kids: bytes = b"[3 0 R 6 0 R]", count: int = 2, content: bytes = b"") -> bytes:
    """Objects: 1 catalog, 2 pages root, 3 page one, 4 its text, 5 font, 6 page two, 7 its content."""
    pages = b"<< /Type /Pages /Kids %s /Count %d >>" % (kids, count)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", pages, _page(4), _text(b"one"), FONT, second]
    return raw_pdf([*objects, content or _text(b"two")])


def ink(out: Path, manifest: Manifest, page: int) -> int:
    """Darkest grey level of a rendered page: < 100 means something was drawn."""
    record = next(p for p in manifest.pages if p.page == page)
    return Image.open(out / record.file).convert("L").getextrema()[0]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------- sniffing ----------


def test_header_after_1000_junk_bytes_renders(tmp_path: Path) -> None:
    src = write(tmp_path, "mail.pdf", b"X" * 1000 + two_page_pdf(_page(7)))
    manifest = render(src, tmp_path)
    assert manifest.kind == "pdf" and len(manifest.pages) == 2 and manifest.complete


def test_headerless_body_renders_in_poppler(tmp_path: Path) -> None:
    # No "%PDF-" at all, only the binary marker line: pdfium refuses it, poppler reads the body.
    data = two_page_pdf(_page(7)).replace(b"%PDF-1.4\n", b"%\xe2\xe3\xcf\xd3\n", 1)
    src = write(tmp_path, "noheader.pdf", data)
    logged: list[str] = []
    manifest = rasterize_document(src, tmp_path / "out", settings(), log=logged.append)
    assert [p.renderer for p in manifest.pages] == ["pdf2image", "pdf2image"]
    assert manifest.renderers_tried == ["pypdfium2", "pdf2image"]
    assert ink(tmp_path / "out", manifest, 2) < 100
    assert any("pypdfium2 could not render it" in line for line in logged)


def test_garbage_is_still_refused_with_one_line(tmp_path: Path) -> None:
    marker_then_text = write(tmp_path, "a.pdf", b"%\xe2\xe3\xcf\xd3\nthis is a letter, not a PDF body")
    assert_refused(marker_then_text, tmp_path, "an unknown binary format, not a document this pipeline reads")
    fake_body = write(tmp_path, "b.pdf", b"%\xe2\xe3\xcf\xd3\n1 0 obj << /Broken")
    message = assert_refused(fake_body, tmp_path, "cannot render PDF: pypdfium2: ")
    assert "; pdf2image: " in message


# ---------- page-level fallback ----------


def test_page_pdfium_rejects_is_drawn_by_poppler(tmp_path: Path) -> None:
    # Page two says /Type /Pages: pdfium cannot size it ("Failed to get page size by index"),
    # poppler draws it. Page one stays with pdfium.
    src = write(tmp_path, "tree.pdf", two_page_pdf(_page(7, kind=b"/Pages")))
    manifest = render(src, tmp_path)
    assert [(p.page, p.renderer) for p in manifest.pages] == [(1, "pypdfium2"), (2, "pdf2image")]
    assert manifest.complete and ink(tmp_path / "out", manifest, 2) < 100


def test_page_poppler_rejects_is_drawn_by_pdfium(tmp_path: Path) -> None:
    # A null entry in /Kids: poppler gives pages 2 and 3 no size; pdfium draws page 3 (object 6).
    src = write(tmp_path, "kids.pdf", two_page_pdf(_page(7), kids=b"[3 0 R null 6 0 R]", count=3))
    manifest = render(src, tmp_path, pdf_renderer="pdf2image")
    assert [(p.page, p.renderer) for p in manifest.pages] == [(1, "pdf2image"), (3, "pypdfium2")]
    assert ink(tmp_path / "out", manifest, 3) < 100


def test_page_tree_poppler_refuses_whole_is_drawn_by_pdfium(tmp_path: Path) -> None:
    # /Count 0 over two real kids: poppler sees no pages at all, pdfium walks the kids.
    src = write(tmp_path, "count0.pdf", two_page_pdf(_page(7), count=0))
    manifest = render(src, tmp_path, pdf_renderer="pdf2image")
    assert [p.renderer for p in manifest.pages] == ["pypdfium2", "pypdfium2"] and manifest.complete


def test_broken_content_stream_costs_only_its_drawing(tmp_path: Path) -> None:
    # Page two's content claims Flate but is not: both renderers draw it blank and say nothing; the
    # document and its other page are unharmed.
    content = _stream(b"/Filter /FlateDecode", b"not deflate data at all")
    src = write(tmp_path, "flate.pdf", two_page_pdf(_page(7), content=content))
    manifest = render(src, tmp_path)
    assert manifest.complete and ink(tmp_path / "out", manifest, 1) < 100
    assert ink(tmp_path / "out", manifest, 2) == 255


# ---------- partial documents ----------


def kids_with_a_hole(tmp_path: Path) -> Path:
    """Page 2 of 3 is a null /Kids entry: neither renderer can draw it; pages 1 and 3 are fine."""
    return write(tmp_path, "hole.pdf", two_page_pdf(_page(7), kids=b"[3 0 R null 6 0 R]", count=3))


def test_page_failing_in_both_renderers_is_skipped(tmp_path: Path) -> None:
    logged: list[str] = []
    manifest = rasterize_document(kids_with_a_hole(tmp_path), tmp_path / "out", settings(), log=logged.append)
    assert [p.page for p in manifest.pages] == [1, 3]
    [skipped] = manifest.skipped
    assert skipped.page == 2 and "pypdfium2: " in skipped.reason and "; pdf2image: " in skipped.reason
    assert Manifest.read(tmp_path / "out").skipped == manifest.skipped  # the manifest on disk lists it
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["page-0001.png", "page-0003.png"]
    summary = manifest.summary()
    assert summary.startswith("2 of 3 pages rendered; skipped: 2 (pypdfium2: Failed to get page size")
    assert any(summary in line for line in logged)


def test_allow_partial_false_restores_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLQWEN_ALLOW_PARTIAL", "false")
    strict = Settings(_env_file=None)
    assert strict.allow_partial is False
    out = tmp_path / "out"
    with pytest.raises(DocumentError) as info:
        rasterize_document(kids_with_a_hole(tmp_path), out, strict)
    message = str(info.value)
    assert message.startswith("hole.pdf: 2 of 3 pages rendered (COLQWEN_ALLOW_PARTIAL=false): page 2: pypdfium2: ")
    assert "\n" not in message and not out.exists()


def test_no_renderable_page_fails_with_one_line(tmp_path: Path) -> None:
    src = write(tmp_path, "empty-tree.pdf", two_page_pdf(_page(7), kids=b"[null null]", count=2))
    message = assert_refused(src, tmp_path, "no page could be rendered: page 1: pypdfium2: ")
    assert "page 2: pypdfium2: " in message


# ---------- through the pipeline: metadata, the WARN check, the CLI's lines ----------


def test_partial_document_is_indexed_with_a_warning(state: Settings) -> None:
    write(state.inbox, "hole.pdf", kids_with_a_hole(state.inbox.parent).read_bytes())
    key = document_key("hole.pdf")
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        summary = ingest(state, instance=instance, echo=lines.append)
        run_id = instance.get_runs(limit=1)[0].run_id
        checks = {e.check_name: e for e in run_check_evaluations(instance, run_id)}
        pages = [m for m in run_materializations(instance, run_id) if m.asset_key.to_user_string() == "page_images"]

    assert summary.failed == {} and summary.pages == 2  # pages 1 and 3 are searchable
    check = checks["pages_complete"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and check.partition == key
    assert check.description.startswith("Warning: 2 of 3 pages rendered; skipped: 2 (")  # issue 16 item 5
    assert pages[0].metadata["rendered"].value == check.description.removeprefix("Warning: ")
    assert any(line.startswith(f"    check pages_complete ({key}): WARN: 2 of 3 pages rendered") for line in lines)


def test_rasterize_command_names_the_skipped_page(tmp_path: Path) -> None:
    src = kids_with_a_hole(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "colqwen_pipeline.cli", "rasterize", str(src), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("2 of 3 pages rendered; skipped: 2 (pypdfium2: ")
    assert ok.stdout.strip().endswith(f"written to {tmp_path / 'out'}")
