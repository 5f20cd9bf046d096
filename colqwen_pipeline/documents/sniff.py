"""Decide what a file is from its first bytes; extensions lie and are never consulted."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Literal

from colqwen_pipeline.documents.manifest import DocumentError

Kind = Literal["pdf", "image", "office"]

HEAD_BYTES = 1024  # PDF readers accept junk before "%PDF-" within the first 1 KiB
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # DOC/XLS/PPT compound file
IMAGE_MAGICS = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"BM",
    b"GIF87a",
    b"GIF89a",
)
# A PDF without its "%PDF-" header (poppler reads such files, "May not be a PDF file (continuing
# anyway)"): only comment lines (e.g. the binary marker "%âãÏÓ") and whitespace before "N G obj".
HEADERLESS_PDF = re.compile(rb"\A(?:[ \t\r\n]*%[^\r\n]*[\r\n]+)*[ \t\r\n]*\d+[ \t\r\n]+\d+[ \t\r\n]+obj\b")
# Members that mark a zip as an OOXML or ODF document (and not just any zip).
OFFICE_ZIP_MEMBERS = ("[Content_Types].xml", "mimetype", "content.xml")


def sniff(path: Path) -> Kind:
    """Return the document kind, or raise DocumentError naming what the file starts with."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        raise DocumentError(f"{path.name}: empty file")
    if b"%PDF-" in head or HEADERLESS_PDF.match(head):
        return "pdf"  # whether the body really parses is for the renderers to say
    if head.startswith(IMAGE_MAGICS) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head.startswith(OLE_MAGIC):
        return "office"
    if head.startswith(b"PK\x03\x04"):
        _check_office_zip(path)
        return "office"
    raise DocumentError(f"{path.name}: not a supported document: file starts with {head[:16]!r}")


def _check_office_zip(path: Path) -> None:
    """A zip is an office document only with OOXML/ODF members; say which way it falls short."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as e:  # typically a truncated upload or copy
        raise DocumentError(f"{path.name}: corrupt zip archive (a damaged DOCX/XLSX/PPTX?): {e}") from None
    if not any(m in names for m in OFFICE_ZIP_MEMBERS):
        raise DocumentError(f"{path.name}: not a supported document: a zip archive without office document parts")
