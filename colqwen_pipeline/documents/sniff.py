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
    """Return the document kind, or raise DocumentError saying what the file is instead."""
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
    raise DocumentError(f"{path.name}: {what_else(head)}, not a document this pipeline reads ({READABLE})")


READABLE = "PDF, Office documents, images"
TEXT_KINDS = (  # (how the text starts, what to call it), after leading whitespace, lower-cased
    ((b"<!doctype html", b"<html"), "a web page (HTML)"),
    ((b"<?xml",), "an XML file"),
    ((b"{\\rtf",), "an RTF file (save it as DOCX or PDF)"),
)


def what_else(head: bytes) -> str:
    """What a refused file is, in words: plain text of some kind, or an unknown binary format."""
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as error:  # a multi-byte character cut by HEAD_BYTES is still text
        text = head[: error.start].decode("utf-8-sig", "ignore") if error.start > len(head) - 4 else ""
    if not text or any(not (c.isprintable() or c in "\t\r\n\f") for c in text):
        return "an unknown binary format"
    start = text.lstrip().lower().encode()
    return next((name for prefixes, name in TEXT_KINDS if start.startswith(prefixes)), "plain text")


def _check_office_zip(path: Path) -> None:
    """A zip is an office document only with OOXML/ODF members; say which way it falls short."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as e:  # typically a truncated upload or copy
        raise DocumentError(f"{path.name}: corrupt zip archive (a damaged DOCX/XLSX/PPTX?): {e}") from None
    if not any(m in names for m in OFFICE_ZIP_MEMBERS):
        raise DocumentError(f"{path.name}: a zip archive, not a document this pipeline reads: unpack it into the inbox")
