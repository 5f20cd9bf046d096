"""Put a finished directory in place of another in one step, so readers never see half a document;
sweep the temporaries a crashed write left behind."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
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


STALE_AFTER_S = 3600.0  # a live writer's temporary is younger: each file written into it refreshes its mtime
SCRATCH_PREFIXES = ("colqwen-office-", "colqwen-lo-")  # conversions in the system temp folder


def sweep_temporaries(folders: list[Path], older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what crashed or killed writes left: hidden ``.<name>.*`` directories beside the
    documents' pages and embeddings, and this user's conversion scratch in the temp folder, once
    they are older than ``older_than_s``. Returns what was removed."""
    candidates = [entry for folder in folders if folder.is_dir() for entry in folder.glob(".*") if entry.is_dir()]
    scratch = Path(tempfile.gettempdir())
    candidates += [entry for prefix in SCRATCH_PREFIXES for entry in scratch.glob(f"{prefix}*")]
    cutoff = time.time() - older_than_s
    removed = []
    for entry in candidates:
        try:
            info = entry.lstat()
        except OSError:
            continue
        if info.st_uid == os.getuid() and info.st_mtime < cutoff and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
