"""What makes the pixel budget's bound true after a request: freed memory going back to the OS.

glibc keeps one malloc arena per thread, and by default serves buffers up to 32 MB (Pillow's 16-MB
image blocks, the processor's tensors) from them once a large free has raised its dynamic mmap
threshold. A request's decoded page is then freed into its thread's arena and kept there: parallel
39-Mpx requests took the server from 0.5 to 3.2 GB, for good (issue 26 item 7). So buffers from
LARGE_BUFFER_BYTES on get their own mapping (returned at free), and after a large request the arenas'
free pages are given back too. Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it also stops the dynamic threshold
LARGE_BUFFER_BYTES = 8 * 2**20  # under Pillow's 16-MB blocks, above the small objects a request churns


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.cache
def large_buffers_in_own_mappings() -> bool:
    """Once per process: large buffers are mapped apart and unmapped when freed. True if it took effect."""
    libc = _libc()
    applied = bool(libc and libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
    if not applied:
        log.info("not glibc: the pixel budget bounds allocations, but freed memory may stay with the process")
    return applied


def return_freed_memory() -> None:
    """Give the free pages of every arena back to the OS (a few ms; called after large requests)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
