"""The trash on real files: a removed original keeps its bytes for COLQWEN_TRASH_DAYS, comes back on
restore without replacing anything, and moves across file systems (a copy, synced, then the source)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from colqwen_pipeline.inbox import document_key, inbox_files
from colqwen_pipeline.service.trash import Trash, TrashError, move


def test_a_trashed_file_leaves_the_inbox_and_comes_back_whole(state) -> None:
    original = os.urandom(50_000)
    (state.inbox / "reports").mkdir()
    (state.inbox / "reports" / "q3.pdf").write_bytes(original)
    doc_id = document_key("reports/q3.pdf")
    trash = Trash(state)

    entry = trash.put(doc_id, state.inbox / "reports" / "q3.pdf")
    assert doc_id not in inbox_files(state.inbox)  # the sensor sees a deletion
    assert entry.file.read_bytes() == original and entry.file.is_relative_to(state.home_dir / "trash")
    assert [e.document for e in trash.entries()] == ["reports/q3.pdf"]

    (state.inbox / "reports" / "q3.pdf").write_bytes(b"a newer file of that name")
    with pytest.raises(TrashError, match="in the inbox again"):
        trash.restore(doc_id)
    assert (state.inbox / "reports" / "q3.pdf").read_bytes() == b"a newer file of that name"  # not replaced
    (state.inbox / "reports" / "q3.pdf").unlink()

    before = time.time()
    trash.restore(doc_id)
    restored = state.inbox / "reports" / "q3.pdf"
    assert restored.read_bytes() == original and trash.entries() == []
    assert restored.stat().st_mtime >= before - 1  # reads as new to a sensor that saw it before the removal
    with pytest.raises(TrashError, match="not in the trash"):
        trash.restore(doc_id)


def test_the_trash_empties_entries_older_than_its_days(state) -> None:
    for name in ("old.pdf", "new.pdf"):
        (state.inbox / name).write_bytes(b"%PDF-1.7 " + name.encode())
    keeping = Trash(state)
    old = keeping.put(document_key("old.pdf"), state.inbox / "old.pdf")
    meta = old.folder / "entry.json"
    meta.write_text(meta.read_text().replace(str(old.removed_at), str(old.removed_at - 31 * 86400)))
    keeping.put(document_key("new.pdf"), state.inbox / "new.pdf")  # a removal empties what expired
    assert [e.document for e in keeping.entries()] == ["new.pdf"] and not old.folder.exists()

    assert Trash(state.model_copy(update={"trash_days": 0})).empty_expired() == ["new.pdf"]


def test_a_move_to_another_file_system_copies_then_removes(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system here")
    source, target = tmp_path / "scan.png", shm / f"colqwen-trash-test-{os.getpid()}.png"
    source.write_bytes(b"\x89PNG" + os.urandom(10_000))
    data = source.read_bytes()
    try:
        move(source, target)
        assert target.read_bytes() == data and not source.exists()
        source.write_bytes(b"other")
        with pytest.raises(FileExistsError):  # never over an existing file
            move(source, target)
        assert target.read_bytes() == data and source.exists()
    finally:
        target.unlink(missing_ok=True)
