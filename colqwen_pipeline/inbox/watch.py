"""What changed in the inbox since the last look: the sensor's logic, without Dagster.

The state maps partition key -> {size, mtime_ns, sha256, pending}. A tick costs one ``stat`` per
file; a file is hashed only when its size or mtime moved and it has settled (unchanged since the
previous tick, or untouched for ``settle_s`` seconds), so a file still being written waits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from colqwen_pipeline.inbox import file_sha256, inbox_files


@dataclass
class InboxChanges:
    new: dict[str, str] = field(default_factory=dict)  # key -> sha256
    changed: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # still being written

    @property
    def to_ingest(self) -> dict[str, str]:
        return self.new | self.changed


def scan_inbox(
    inbox: Path,
    state: dict[str, dict],
    settle_s: float = 5.0,
    now: float | None = None,
    max_file_bytes: int | None = None,
    hash_budget_bytes: int | None = None,
) -> tuple[InboxChanges, dict[str, dict]]:
    """Compare the inbox with ``state``; return the changes and the next state.

    A tick never reads more than ``hash_budget_bytes`` (the rest wait for the next tick) and never
    hashes a file over ``max_file_bytes``: such a file is handed on by size and mtime, and the run
    refuses it with one line instead of the tick spending minutes on it."""
    now = time.time() if now is None else now
    changes, next_state = InboxChanges(), {}
    budget = hash_budget_bytes
    for key, path in inbox_files(inbox).items():
        try:
            stat = path.stat()
        except FileNotFoundError:  # deleted between listing and stat
            continue
        seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        previous = state.get(key)
        same_as_before = previous is not None and {k: previous[k] for k in seen} == seen
        if same_as_before and not previous["pending"]:
            next_state[key] = previous
            continue
        settled = same_as_before or now - stat.st_mtime >= settle_s
        old_sha = previous.get("sha256") if previous else None
        if not settled:
            changes.waiting.append(key)
            next_state[key] = seen | {"sha256": old_sha, "pending": True}
            continue
        if max_file_bytes is not None and stat.st_size > max_file_bytes:
            sha = f"oversize-{stat.st_size}-{stat.st_mtime_ns}"
        elif budget is not None and stat.st_size > budget and budget < (hash_budget_bytes or 0):
            changes.waiting.append(key)  # this tick has read its share: the next one hashes it
            next_state[key] = seen | {"sha256": old_sha, "pending": True}
            continue
        else:
            sha = file_sha256(path)
            budget = None if budget is None else budget - stat.st_size
        next_state[key] = seen | {"sha256": sha, "pending": False}
        if old_sha is None:
            changes.new[key] = sha
        elif old_sha != sha:
            changes.changed[key] = sha
    changes.deleted = sorted(k for k, v in state.items() if k not in next_state and v.get("sha256"))
    return changes, next_state
