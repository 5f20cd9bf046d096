"""Put a finished directory in place of another in one step, so readers never see half a document."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2  # Linux renameat2 flag: swap two paths atomically


def _renameat2():  # -> the libc function, or None where it does not exist
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an existing ``target`` directory; ``new`` is gone after."""
    if not target.exists():
        new.rename(target)
        return
    fn = _renameat2()
    if fn is not None and fn(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE) == 0:
        shutil.rmtree(new)  # ``new`` now holds the old contents
        return
    # No atomic exchange (other OS or filesystem): two renames, restoring the old one on failure.
    old = new.with_name(new.name + ".old")
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old)
