"""Rasterisation: every fixture is generated here, in tmp_path (reportlab, Pillow, pypdf, raw bytes)."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from colqwen_pipeline.documents import DocumentError, Manifest, rasterize_document
from colqwen_pipeline.settings import Settings

A4_200 = (1654, 2339)  # A4 at 200 DPI, as pdfium and pdftoppm size it
A4_150 = (1240, 1754)
needs_soffice = pytest.mark.skipif(
    shutil.which("soffice") is None,
    reason="LibreOffice not installed (apt-get install libreoffice-writer-nogui)",
)


# ---------- fixture builders ----------


def make_pdf(path: Path, pages: int = 3, size: tuple[float, float] = A4) -> Path:
    c = canvas.Canvas(str(path), pagesize=size)
    for i in range(pages):
        c.setFont("Helvetica", 24)
        c.drawString(72, size[1] - 100, f"Page {i + 1} of {pages}")
        c.rect(72, 72, 200, 150, fill=1)
        c.showPage()
    c.save()
    return path


def raw_pdf(objects: list[bytes]) -> bytes:
    """A minimal well-formed PDF (correct xref) from numbered object bodies; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _stream(extra: bytes, data: bytes) -> bytes:
    return b"<< %s /Length %d >>\nstream\n" % (extra, len(data)) + data + b"\nendstream"


def xobject_bomb(path: Path, depth: int, fan: int) -> Path:
    """One page drawing a form that draws the previous form ``fan`` times, ``depth`` levels deep."""
    first_form = 5
    forms = []
    for k in range(depth):
        if k == 0:
            content, res = b"0 0 m 10 10 l S", b""
        else:
            content = b" ".join([b"q 1 0 0 1 1 1 cm /X Do Q"] * fan)
            res = b"/Resources << /XObject << /X %d 0 R >> >>" % (first_form + k - 1)
        forms.append(_stream(b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] " + res, content))
    top = first_form + depth - 1
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
    page += b"/Resources << /XObject << /X %d 0 R >> >> >>" % top
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        page,
        _stream(b"", b"/X Do"),
        *forms,
    ]
    path.write_bytes(raw_pdf(objects))
    return path


def encrypted_pdf(tmp_path: Path, password: str) -> Path:
    pypdf = pytest.importorskip("pypdf", reason="pypdf is a test dependency (pip install pypdf)")
    writer = pypdf.PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", pages=2))
    writer.encrypt(password)
    out = tmp_path / "secret.pdf"
    writer.write(out)
    return out


def settings(**overrides) -> Settings:
    return Settings(_env_file=None, **overrides)


def render(path: Path, tmp_path: Path, **overrides) -> Manifest:
    return rasterize_document(path, tmp_path / "out", settings(**overrides))


def assert_refused(path: Path, tmp_path: Path, fragment: str, **overrides) -> str:
    with pytest.raises(DocumentError) as info:
        render(path, tmp_path, **overrides)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ") and "\n" not in message
    assert fragment in message
    return message


def assert_close(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert abs(size[0] - expected[0]) <= 1 and abs(size[1] - expected[1]) <= 1, (size, expected)


# ---------- PDF ----------


@pytest.mark.parametrize("renderer", ["pypdfium2", "pdf2image"])
def test_pdf_pages_sizes_and_manifest(tmp_path: Path, renderer: str) -> None:
    src = make_pdf(tmp_path / "doc.pdf", pages=3)
    manifest = render(src, tmp_path, pdf_renderer=renderer)
    out = tmp_path / "out"
    assert manifest == Manifest.read(out)
    assert manifest.kind == "pdf" and manifest.source == str(src.resolve())
    assert manifest.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [p.file for p in manifest.pages] == ["page-0001.png", "page-0002.png", "page-0003.png"]
    for page in manifest.pages:
        assert page.renderer == renderer and page.dpi == 200
        assert_close((page.width, page.height), A4_200)
        with Image.open(out / page.file) as img:  # black text and a black box: stored as greyscale
            assert img.size == (page.width, page.height) and img.mode == "L"
            raw = f"{img.width}x{img.height}:L:".encode() + img.tobytes()
            assert hashlib.sha256(raw).hexdigest() == page.sha256
    assert sorted(p.name for p in out.glob("preview-*.jpg")) == [
        "preview-0001.jpg",
        "preview-0002.jpg",
        "preview-0003.jpg",
    ]


def test_grey_pages_are_stored_grey_colour_pages_rgb_and_keys_follow_the_pixels(tmp_path: Path) -> None:
    """A grey page is written as 8-bit greyscale with exactly the renderer's pixels, a page with one
    coloured pixel stays RGB, and a page's key is the same whatever mode its pixels arrive in (the
    model server hashes uploads, converted to RGB, with the same function)."""
    from colqwen_pipeline.documents.pages import pixel_sha256, save_page

    grey = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(grey).rectangle((20, 20, 120, 60), fill=(90, 90, 90))
    coloured = grey.copy()
    coloured.putpixel((299, 399), (90, 90, 91))  # one pixel, in a corner the grey probe's reduction averages away

    records = [save_page(image, tmp_path, number, 200) for number, image in ((1, grey), (2, coloured))]

    with Image.open(tmp_path / "page-0001.png") as stored_grey, Image.open(tmp_path / "page-0002.png") as stored_rgb:
        assert (stored_grey.mode, stored_rgb.mode) == ("L", "RGB")
        assert stored_grey.convert("RGB").tobytes() == grey.tobytes()
        assert stored_rgb.tobytes() == coloured.tobytes()
        assert [pixel_sha256(stored_grey), pixel_sha256(stored_rgb)] == [r["sha256"] for r in records]
    assert pixel_sha256(grey) == records[0]["sha256"] == pixel_sha256(grey.convert("L"))
    assert pixel_sha256(coloured) == records[1]["sha256"] != records[0]["sha256"]


def test_long_document_dpi_policy_and_progress_log(tmp_path: Path) -> None:
    src = make_pdf(tmp_path / "long.pdf", pages=12)
    lines: list[str] = []
    s = settings(long_document_pages=10)
    manifest = rasterize_document(src, tmp_path / "out", s, log=lines.append)
    assert len(manifest.pages) == 12 and {p.dpi for p in manifest.pages} == {150}
    assert_close((manifest.pages[0].width, manifest.pages[0].height), A4_150)
    assert any("10/12 pages" in line for line in lines)
    explicit = rasterize_document(src, tmp_path / "out2", s, dpi=72)
    assert_close((explicit.pages[0].width, explicit.pages[0].height), (595, 842))


def test_page_limit_renders_the_first_pages_with_the_whole_documents_policy(tmp_path: Path) -> None:
    src = make_pdf(tmp_path / "long.pdf", pages=12)
    manifest = rasterize_document(src, tmp_path / "out", settings(long_document_pages=10), page_limit=2)
    assert [p.page for p in manifest.pages] == [1, 2] and {p.dpi for p in manifest.pages} == {150}
    assert sorted(f.name for f in (tmp_path / "out").glob("*.png")) == ["page-0001.png", "page-0002.png"]
    with pytest.raises(DocumentError, match="over the cap of 5"):  # the cap still counts every page
        rasterize_document(src, tmp_path / "out", settings(max_pages=5), page_limit=2)
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "green", "blue")]
    tiff = tmp_path / "scan.tif"
    tiff.write_bytes(image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    assert len(rasterize_document(tiff, tmp_path / "tif", settings(), page_limit=2).pages) == 2


def test_same_input_gives_same_hashes(tmp_path: Path) -> None:
    src = make_pdf(tmp_path / "doc.pdf", pages=2)
    first = rasterize_document(src, tmp_path / "a", settings())
    second = rasterize_document(src, tmp_path / "b", settings())
    assert [p.sha256 for p in first.pages] == [p.sha256 for p in second.pages]
    assert first.pages[0].sha256 != first.pages[1].sha256


def test_falls_back_to_the_other_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without poppler on PATH pdf2image cannot render anything: pypdfium2 must take over.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    logged: list[str] = []
    src = make_pdf(tmp_path / "doc.pdf", pages=1)
    s = settings(pdf_renderer="pdf2image")
    manifest = rasterize_document(src, tmp_path / "out", s, log=logged.append)
    assert [p.renderer for p in manifest.pages] == ["pypdfium2"]
    assert any("pdf2image could not render" in line for line in logged)


def test_junk_before_header_and_misleading_extension(tmp_path: Path) -> None:
    src = tmp_path / "report.txt"
    src.write_bytes(b"\x00junk\r\n" + make_pdf(tmp_path / "x.pdf", pages=1).read_bytes())
    assert render(src, tmp_path).kind == "pdf"


def test_empty_garbage_truncated(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    assert_refused(empty, tmp_path, "empty file")
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"hello, this is not a PDF at all")
    assert_refused(garbage, tmp_path, "garbage.pdf: plain text, not a document this pipeline reads (PDF, Office")
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(make_pdf(tmp_path / "full.pdf").read_bytes()[:400])
    message = assert_refused(truncated, tmp_path, "cannot render PDF")
    assert "pypdfium2:" in message and "pdf2image:" in message


def test_zero_page_pdf(tmp_path: Path) -> None:
    pypdf = pytest.importorskip("pypdf")
    src = tmp_path / "zero.pdf"
    pypdf.PdfWriter().write(src)
    assert_refused(src, tmp_path, "PDF has no pages")


def test_encrypted_pdf(tmp_path: Path) -> None:
    src = encrypted_pdf(tmp_path, "s3cret")
    assert_refused(src, tmp_path, "encrypted PDF: no password configured (set COLQWEN_PDF_PASSWORD)")
    assert_refused(src, tmp_path, "encrypted PDF: wrong password", pdf_password="nope")
    assert len(render(src, tmp_path, pdf_password="s3cret").pages) == 2
    assert len(render(src, tmp_path, pdf_password="s3cret", pdf_renderer="pdf2image").pages) == 2


def test_empty_owner_password_opens_through_the_fallback(tmp_path: Path) -> None:
    # As `qpdf --encrypt USER "" 128` writes it (found in the corpus check): pdfium wants the user
    # password, poppler opens it with the empty owner password. Padding makes PadString equal "".
    from reportlab.lib.pdfencrypt import PadString, StandardEncryption

    src = tmp_path / "owner-empty.pdf"
    c = canvas.Canvas(str(src), encrypt=StandardEncryption("s3cret", ownerPassword=PadString, strength=128))
    c.drawString(72, 700, "readable without a password")
    c.showPage()
    c.save()
    logged: list[str] = []
    manifest = rasterize_document(src, tmp_path / "out", settings(), log=logged.append)
    assert [p.renderer for p in manifest.pages] == ["pdf2image"]
    assert any("pypdfium2 could not render it" in line and "Incorrect password" in line for line in logged)
    ink = Image.open(tmp_path / "out" / manifest.pages[0].file).convert("L").getextrema()[0]
    assert ink < 100  # decrypted text, not a blank or garbled page


def test_huge_page_is_refused_before_allocating_and_large_page_is_scaled(tmp_path: Path) -> None:
    poster = make_pdf(tmp_path / "poster.pdf", pages=1, size=(200 * 72, 200 * 72))
    # Under a 512 MB cap, allocating the 4.5 GB bitmap would end as "renderer exceeded 512 MB".
    assert_refused(poster, tmp_path, "page 1: would be 40000×40000 px, over the cap", render_memory_mb=512)
    big = make_pdf(tmp_path / "big.pdf", pages=1, size=(50 * 72, 50 * 72))
    page = render(big, tmp_path, render_memory_mb=1024).pages[0]
    assert page.width * page.height <= 40_000_000 and page.width > 6000
    assert 120 < page.dpi < 200


def test_page_count_and_file_size_caps(tmp_path: Path) -> None:
    many = make_pdf(tmp_path / "many.pdf", pages=4)
    assert_refused(many, tmp_path, "4 pages, over the cap of 3", max_pages=3)
    big = tmp_path / "big.pdf"
    with big.open("wb") as f:
        f.write(b"%PDF-1.4\n")
        f.truncate(2 * 1024 * 1024)
    assert_refused(big, tmp_path, "over the cap of 1 MB", max_file_mb=1)


def test_memory_bomb_is_contained(tmp_path: Path) -> None:
    src = xobject_bomb(tmp_path / "bomb.pdf", depth=12, fan=8)
    assert_refused(src, tmp_path, "renderer exceeded 512 MB", render_memory_mb=512, render_timeout_s=60)


def test_slow_page_hits_the_time_limit(tmp_path: Path) -> None:
    src = xobject_bomb(tmp_path / "slow.pdf", depth=30, fan=2)  # 2**29 tiny draws: cheap memory, forever
    assert_refused(src, tmp_path, "renderer exceeded 1.5 s", render_timeout_s=1.5)


# ---------- atomic output ----------


def test_failure_leaves_out_dir_untouched(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    garbage = tmp_path / "bad.pdf"
    garbage.write_bytes(b"%PDF-1.7\nnot really")
    slow = xobject_bomb(tmp_path / "slow.pdf", depth=30, fan=2)
    for src, s in [(garbage, settings()), (slow, settings(render_timeout_s=1))]:
        with pytest.raises(DocumentError):
            rasterize_document(src, out, s)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temp dir left behind


def test_success_replaces_older_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rasterize_document(make_pdf(tmp_path / "a.pdf", pages=3), out, settings())
    (out / "stale.txt").write_text("x")
    rasterize_document(make_pdf(tmp_path / "b.pdf", pages=1), out, settings())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "page-0001.png", "preview-0001.jpg"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------- images ----------


def image_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def render_image(tmp_path: Path, name: str, data: bytes, **overrides) -> tuple[Manifest, list[Image.Image]]:
    src = tmp_path / name
    src.write_bytes(data)
    manifest = render(src, tmp_path, **overrides)
    assert manifest.kind == "image" and {p.renderer for p in manifest.pages} == {"pillow"}
    pages = [Image.open(tmp_path / "out" / p.file).convert("RGB") for p in manifest.pages]
    return manifest, pages


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 10, 10))
    manifest, [page] = render_image(tmp_path, "t.png", image_bytes(img, "PNG"))
    assert page.getpixel((20, 20)) == (255, 255, 255) and page.getpixel((5, 5)) == (255, 0, 0)
    assert manifest.pages[0].dpi == 0  # no pHYs chunk: resolution unknown
    pal = img.convert("P")  # palette with a transparent index
    _, [page] = render_image(tmp_path, "p.png", image_bytes(pal, "PNG", transparency=pal.getpixel((20, 20))))
    assert page.getpixel((20, 20)) == (255, 255, 255)


def test_multipage_tiff_every_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "green", "blue")]
    data = image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:], dpi=(300, 300))
    manifest, pages = render_image(tmp_path, "scan.tif", data)
    assert [p.getpixel((1, 1)) for p in pages] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert [round(p.dpi) for p in manifest.pages] == [300, 300, 300]


def test_gif_first_frame_only(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "blue")]
    manifest, pages = render_image(
        tmp_path, "a.gif", image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    )
    assert len(pages) == 1 and pages[0].getpixel((1, 1)) == (255, 0, 0)


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    manifest, [page] = render_image(tmp_path, "photo.jpg", image_bytes(img, "JPEG", exif=exif))
    assert page.size == (20, 60)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    _, [page] = render_image(tmp_path, "cmyk.jpg", image_bytes(img, "JPEG", quality=95))
    r, g, b = page.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_grey_png_is_scaled(tmp_path: Path) -> None:
    img = Image.new("I;16", (4, 1))
    for x, v in enumerate((0, 257 * 64, 257 * 128, 65535)):
        img.putpixel((x, 0), v)
    _, [page] = render_image(tmp_path, "grey16.png", image_bytes(img, "PNG"))
    assert [page.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]


def test_image_pixel_caps(tmp_path: Path) -> None:
    img = Image.new("RGB", (150, 150), "navy")
    manifest, [page] = render_image(
        tmp_path, "big.png", image_bytes(img, "PNG", dpi=(100, 100)), max_page_pixels=10_000
    )
    assert page.width * page.height <= 10_000 and page.width >= 99
    assert manifest.pages[0].dpi == pytest.approx(100 * page.width / 150, abs=1)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(image_bytes(Image.new("L", (250, 250)), "PNG"))
    assert_refused(bomb, tmp_path, "page 1 is 250×250 px, over the cap", max_page_pixels=10_000)
    bomb.write_bytes(image_bytes(Image.new("L", (300, 300)), "PNG"))  # past Pillow's own limit
    assert_refused(bomb, tmp_path, "image over the pixel cap", max_page_pixels=10_000)
    tiff = tmp_path / "pages.tif"  # the second frame is the bomb: Pillow checks only the first
    frames = [Image.new("L", (50, 50)), Image.new("L", (300, 300))]
    tiff.write_bytes(image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    assert_refused(tiff, tmp_path, "page 2 is 300×300 px, over the cap", max_page_pixels=10_000)


def test_corrupt_image(tmp_path: Path) -> None:
    src = tmp_path / "broken.png"
    src.write_bytes(image_bytes(Image.new("RGB", (200, 200), "red"), "PNG")[:60])
    assert_refused(src, tmp_path, "cannot decode image")


# ---------- office ----------


def make_docx(path: Path, title: str) -> Path:
    docx = pytest.importorskip("docx")
    doc = docx.Document()
    doc.add_heading(title, 0)
    doc.add_paragraph("Revenue grew. " * 50)
    doc.add_page_break()
    doc.add_paragraph("Second page")
    doc.save(path)
    return path


@needs_soffice
def test_docx_through_libreoffice(tmp_path: Path) -> None:
    src = make_docx(tmp_path / "report.bin", "Quarterly report")  # the content decides, not the extension
    manifest = render(src, tmp_path)
    assert manifest.kind == "office" and len(manifest.pages) == 2
    assert {p.renderer for p in manifest.pages} == {"libreoffice+pypdfium2"}
    assert manifest.pages[0].width > 1000


@needs_soffice
def test_concurrent_office_conversions_do_not_lose_one(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sources = [make_docx(tmp_path / f"d{i}.docx", f"Document {i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda s: rasterize_document(s, tmp_path / f"out-{s.stem}", settings()), sources)
        manifests = list(results)
    assert [len(m.pages) for m in manifests] == [2, 2]
    assert manifests[0].pages[0].sha256 != manifests[1].pages[0].sha256


@needs_soffice
def test_corrupt_docx(tmp_path: Path) -> None:
    import zipfile

    src = tmp_path / "broken.docx"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("[Content_Types].xml", "garbage")
        z.writestr("word/document.xml", "<<<")
    assert_refused(src, tmp_path, "LibreOffice produced no PDF")


def test_damaged_or_non_office_zip_says_so(tmp_path: Path) -> None:
    import zipfile

    src = tmp_path / "memo.docx"
    src.write_bytes(make_docx(tmp_path / "full.docx", "Memo").read_bytes()[:2000])  # a cut-off upload
    assert_refused(src, tmp_path, "corrupt zip archive (a damaged DOCX/XLSX/PPTX?)")
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("notes.txt", "just a zip")
    assert_refused(src, tmp_path, "memo.docx: a zip archive, not a document this pipeline reads: unpack it")


@needs_soffice
def test_legacy_ole_doc_through_libreoffice(tmp_path: Path) -> None:
    import subprocess

    from colqwen_pipeline_tests.conftest import SAMPLES

    profile = f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}"  # never share a running profile
    convert = ["soffice", "--headless", "--norestore", profile, "--convert-to", "doc", "--outdir", str(tmp_path)]
    subprocess.run([*convert, str(SAMPLES / "quarterly_memo.docx")], check=True, capture_output=True, timeout=120)
    doc = tmp_path / "quarterly_memo.doc"
    assert doc.read_bytes()[:8] == bytes.fromhex("d0cf11e0a1b11ae1")  # a Word 97 OLE compound file
    src = doc.rename(tmp_path / "memo.bin")  # the content decides, not the extension

    manifest = render(src, tmp_path)

    assert manifest.kind == "office" and len(manifest.pages) == 2  # the sample memo is two pages
    assert {p.renderer for p in manifest.pages} == {"libreoffice+pypdfium2"}
    first = Image.open(tmp_path / "out" / manifest.pages[0].file).convert("L")
    assert first.getextrema()[0] < 100  # text was drawn, not a blank page


def test_broken_page_tree_tries_both_renderers(tmp_path: Path) -> None:
    # /Kids is not an array: neither pdfium nor poppler can size the page. Both must refuse.
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids 3 0 R /Count 1 >>",
        page,
        _stream(b"", b"0 0 m 100 100 l S"),
    ]
    src = tmp_path / "kids.pdf"
    src.write_bytes(raw_pdf(objects))
    logged: list[str] = []
    with pytest.raises(DocumentError) as info:
        rasterize_document(src, tmp_path / "out", settings(), log=logged.append)
    message = str(info.value)
    assert message.startswith("kids.pdf: no page could be rendered: page 1: pypdfium2: ")
    assert "; pdf2image: Syntax Error: Kids object (page 1) is wrong type" in message
    assert any("pypdfium2 could not render page(s) 1; trying the next renderer" in line for line in logged)
