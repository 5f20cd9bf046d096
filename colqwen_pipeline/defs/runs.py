"""How many documents go in one Dagster run: contiguous ranges of the dynamic partitions.

A run over a partition range is how Dagster runs many partitions in one step (backfills do the
same): ``dagster/asset_partition_range_start`` / ``_end`` tags name the first and last key in the
partitions' order. New files are appended to that order, so a drop of N files is
ceil(N / max_per_run) ranges. Scattered changes share a range when only current documents lie
between them (each costs a ``stat``); a range never covers a document that failed as it is now, or
one another run is working on, so no run reports on a document it was not asked to redo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import dagster as dg

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"
TRIGGER = "colqwen/trigger"  # cli, sensor, schedule, server, ui, api
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def partition_ranges(
    ordered: Sequence[str], wanted: Iterable[str], max_per_run: int, may_span: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """(first, last) keys of ranges of ``ordered`` that cover every wanted key and, between them,
    only keys of ``may_span``; none spans more than ``max_per_run`` partitions."""
    chosen, spannable = set(wanted), set(may_span)
    positions = [i for i, key in enumerate(ordered) if key in chosen]
    blocked = [0]  # blocked[i]: keys before position i that a range must not cover
    for key in ordered:
        blocked.append(blocked[-1] + (key not in chosen and key not in spannable))
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(positions):
        start, j = positions[i], i
        while (
            j + 1 < len(positions)
            and positions[j + 1] - start < max_per_run
            and blocked[positions[j + 1]] == blocked[positions[j]]
        ):
            j += 1
        ranges.append((ordered[start], ordered[positions[j]]))
        i = j + 1
    return ranges


def range_tags(first: str, last: str, trigger: str) -> dict[str, str]:
    return {RANGE_START: first, RANGE_END: last, TRIGGER: trigger}


def keys_in_flight(instance: dg.DagsterInstance, ordered: Sequence[str], job_name: str) -> set[str]:
    """Partitions that a queued or running run of ``job_name`` covers."""
    position = {key: i for i, key in enumerate(ordered)}
    busy: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=UNFINISHED)):
        first, last = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
        if first is None or last is None:
            first = last = run.tags.get(PARTITION)
        if first in position and last in position:
            busy.update(ordered[position[first] : position[last] + 1])
    return busy


def stable_key(*parts: str) -> str:
    """A run key that is the same in every process (``hash()`` is salted per process)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
