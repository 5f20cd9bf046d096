"""How many documents go in one Dagster run: contiguous ranges of the dynamic partitions.

A run over a partition range is how Dagster runs many partitions in one step (backfills do the
same): ``dagster/asset_partition_range_start`` / ``_end`` tags name the first and last key in the
partitions' order. New files are appended to that order, so a drop of N files is
ceil(N / max_per_run) ranges; scattered changes share a range when they lie within one run's span
(the unchanged documents between them cost a ``stat`` each).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
TRIGGER = "colqwen/trigger"  # cli, sensor, schedule (UI launches carry Dagster's own tags)


def partition_ranges(ordered: Sequence[str], wanted: Iterable[str], max_per_run: int) -> list[tuple[str, str]]:
    """(first, last) keys of ranges of ``ordered`` that cover every wanted key; none spans more
    than ``max_per_run`` partitions."""
    chosen = set(wanted)
    positions = [i for i, key in enumerate(ordered) if key in chosen]
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(positions):
        start, j = positions[i], i
        while j + 1 < len(positions) and positions[j + 1] - start < max_per_run:
            j += 1
        ranges.append((ordered[start], ordered[positions[j]]))
        i = j + 1
    return ranges


def range_tags(first: str, last: str, trigger: str) -> dict[str, str]:
    return {RANGE_START: first, RANGE_END: last, TRIGGER: trigger}


def stable_key(*parts: str) -> str:
    """A run key that is the same in every process (``hash()`` is salted per process)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
