"""Why a render step failed: one code enum and one exception, shared by the worker and the parent.

The worker sends ``{"error": code.value, "message": ...}``; the parent turns it back into a
``RenderError`` with the same code. A code that is not a member raises at once (a typo cannot
silently change the renderer fallback).
"""

from __future__ import annotations

from enum import StrEnum


class FailureCode(StrEnum):
    OPEN = "open"  # the renderer cannot open or draw the file (damaged structure, unknown format)
    PASSWORD = "password"  # encrypted, and no or the wrong password
    NOPAGES = "nopages"  # opens, but has no pages
    PAGES = "pages"  # more pages than COLQWEN_MAX_PAGES
    PIXELS = "pixels"  # a page over the pixel cap even when scaled down
    MEMORY = "memory"  # the worker hit its address-space cap or was killed by a signal
    TIMEOUT = "timeout"  # the document's deadline passed
    OFFICE = "office"  # LibreOffice missing or produced no PDF


# Failures the other PDF renderer may not share. PASSWORD: a PDF encrypted with an empty *owner*
# password opens in poppler without one, in pdfium only with the user password (docs/rasterization.md).
FALLBACK_CODES = frozenset({FailureCode.OPEN, FailureCode.NOPAGES, FailureCode.PASSWORD})


class RenderError(Exception):
    """A failed render step with a machine-readable ``code``; the parent makes a DocumentError of it."""

    def __init__(self, code: FailureCode | str, message: str) -> None:
        super().__init__(message)
        self.code = FailureCode(code)
