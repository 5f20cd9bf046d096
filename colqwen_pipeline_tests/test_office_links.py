"""Office conversion never fetches what a document links to (issue 20 item 9: SSRF, local file reads).

A generated ODT links a picture to a local HTTP listener or to a ``file://`` PNG of a distinctive colour;
the converted page must show neither, and the listener must see no request. A control ODT with the same
picture embedded in the zip proves the colour check can fail.
"""

from __future__ import annotations

import http.server
import io
import shutil
import socket
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from colqwen_pipeline.documents import office, rasterize_document
from colqwen_pipeline.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) not installed")

MAGENTA = (255, 0, 255)
ODF_TEXT = "application/vnd.oasis.opendocument.text"
NAMESPACES = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" '
    'xmlns:xlink="http://www.w3.org/1999/xlink"'
)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_odt(path: Path, href: str, embedded: bytes | None = None) -> Path:
    """A one-page text document whose only picture is ``href`` (a URL, or a zip member when embedded)."""
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {NAMESPACES} office:version="1.2">'
        "<office:body><office:text><text:p>A linked picture</text:p><text:p>"
        '<draw:frame draw:name="picture" text:anchor-type="as-char" svg:width="10cm" svg:height="10cm">'
        f'<draw:image xlink:href="{href}" xlink:type="simple" xlink:show="embed" xlink:actuate="onLoad"/>'
        "</draw:frame></text:p></office:text></office:body></office:document-content>"
    )
    entries = [("/", ODF_TEXT), ("content.xml", "text/xml")] + ([(href, "image/png")] if embedded else [])
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
        + "".join(f'<manifest:file-entry manifest:full-path="{p}" manifest:media-type="{t}"/>' for p, t in entries)
        + "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as odt:
        odt.writestr(zipfile.ZipInfo("mimetype"), ODF_TEXT)  # first and stored, as ODF requires
        odt.writestr("META-INF/manifest.xml", manifest)
        odt.writestr("content.xml", content)
        if embedded:
            odt.writestr(href, embedded)
    return path


class PictureServer(http.server.ThreadingHTTPServer):
    """Serves a magenta PNG on any path and records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _PictureHandler)


class _PictureHandler(http.server.BaseHTTPRequestHandler):
    server: PictureServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = png_bytes(MAGENTA)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def picture_server() -> Iterator[PictureServer]:
    server = PictureServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def page_colours(odt: Path, tmp_path: Path) -> set[tuple[int, int, int]]:
    out = tmp_path / f"pages-{odt.stem}"
    manifest = rasterize_document(odt, out, Settings(_env_file=None))
    assert manifest.kind == "office" and len(manifest.pages) == 1
    with Image.open(out / manifest.pages[0].file) as page:
        return {colour for _, colour in page.convert("RGB").getcolors(1 << 24)}


def test_an_embedded_picture_still_renders(tmp_path: Path) -> None:
    odt = make_odt(tmp_path / "embedded.odt", "Pictures/magenta.png", embedded=png_bytes(MAGENTA))
    assert MAGENTA in page_colours(odt, tmp_path)


def test_a_linked_http_picture_is_not_fetched(tmp_path: Path, picture_server: PictureServer) -> None:
    url = f"http://127.0.0.1:{picture_server.server_port}/x.png"
    colours = page_colours(make_odt(tmp_path / "http.odt", url), tmp_path)
    assert picture_server.requests == []
    assert MAGENTA not in colours


def test_a_linked_local_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(MAGENTA))
    colours = page_colours(make_odt(tmp_path / "file.odt", secret.as_uri()), tmp_path)
    assert MAGENTA not in colours


def test_profile_settings_alone_block_links_where_no_namespace_is_allowed(
    tmp_path: Path, picture_server: PictureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback when unshare is refused (a container without user namespaces): still no fetch."""
    monkeypatch.setattr(office, "no_network_prefix", lambda: ())
    url = f"http://127.0.0.1:{picture_server.server_port}/x.png"
    colours = page_colours(make_odt(tmp_path / "http.odt", url), tmp_path)
    assert picture_server.requests == []
    assert MAGENTA not in colours


def test_the_network_namespace_cuts_off_loopback(picture_server: PictureServer) -> None:
    prefix = office.no_network_prefix()
    if not prefix:
        pytest.skip("network namespaces are not permitted here; the profile settings are the only wall")
    port = picture_server.server_port
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
    inside = subprocess.run([*prefix, "python3", "-c", probe], capture_output=True, timeout=30, check=False)
    assert inside.returncode != 0 and b"Network is unreachable" in inside.stderr
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # reachable outside: the probe is fair
