"""Which documents need a run, decided before anything is launched: a ``stat`` per file, the stamp
the engine leaves per document (bulk/stamps.py) and the failures recorded since each file last
changed. The sensor, the schedule and the CLI plan with this one function, so an unchanged inbox
launches nothing and a document broken for good is listed, not retried every night."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from colqwen_pipeline.bulk import versions
from colqwen_pipeline.bulk.stamps import read_stamp
from colqwen_pipeline.inbox import file_sha256
from colqwen_pipeline.settings import Settings

HASH_BUDGET_BYTES = 2 << 30  # hashed per plan at most (~4 s): a sensor tick must end well inside its deadline
Failures = Callable[[dict[str, Path]], dict[str, str]]  # files -> {key: cause} of those failed as they are


@dataclass(frozen=True)
class Target:
    """What every document's index rows depend on besides its own file."""

    fingerprint: str  # the model's
    collection: str  # the physical collection its rows go to
    schema: str

    def document_version(self, settings: Settings, source_sha256: str) -> str:
        return versions.document_version(source_sha256, settings, self.fingerprint, self.collection, self.schema)

    def digest(self, settings: Settings) -> str:
        return versions.context_digest(settings, self.fingerprint, self.collection, self.schema)


def current_target(settings: Settings) -> Target:
    """The configured model and index, without loading the model or opening the index."""
    from colqwen_pipeline.embedding.registry import model_identity
    from colqwen_pipeline.index import make_index

    fingerprint = model_identity(settings).fingerprint
    target = make_index(settings).rebuild_target(fingerprint)
    return Target(fingerprint, target.collection, target.schema_version)


@dataclass
class Plan:
    work: list[str] = field(default_factory=list)  # new, changed, or made under another target
    current: set[str] = field(default_factory=set)  # every stage current: nothing to do
    failed: dict[str, str] = field(default_factory=dict)  # failed as the file is now: listed, not retried
    waiting: list[str] = field(default_factory=list)  # written in the last settle_s seconds
    in_flight: set[str] = field(default_factory=set)  # a queued or running run covers them
    gone: list[str] = field(default_factory=list)  # partitions whose file left the inbox

    @property
    def idle(self) -> bool:
        return not (self.work or self.gone)


def inbox_stats(files: Mapping[str, Path]) -> dict[str, os.stat_result]:
    stats = {}
    for key, path in files.items():
        try:
            stats[key] = path.stat()
        except OSError:  # deleted between listing and stat: it is gone
            continue
    return stats


def fingerprint(stats: Mapping[str, os.stat_result], target_digest: str) -> str:
    """A short digest of every file's key, size and mtime and of the target: the sensor's cursor."""
    digest = hashlib.sha256(target_digest.encode())
    for key in sorted(stats):
        digest.update(f"{key}\0{stats[key].st_size}\0{stats[key].st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def plan_documents(
    settings: Settings,
    files: Mapping[str, Path],
    target: Target,
    *,
    known: Iterable[str] = (),
    failures: Failures = lambda _: {},
    in_flight: Iterable[str] = (),
    stats: Mapping[str, os.stat_result] | None = None,
    force: bool = False,
    settle_s: float = 0.0,
    now: float | None = None,
    hash_budget_bytes: int = HASH_BUDGET_BYTES,
) -> Plan:
    """Sort ``files`` into work, current, failed, waiting and in flight; ``known`` partitions with no
    file are gone. ``force`` plans every file (failures included). A file touched since its stamp
    (same size or not, new mtime) is hashed, within ``hash_budget_bytes`` per call: if its content is
    the stamp's, it is current and its stamp takes the new mtime; beyond the budget it is planned,
    and its run hashes it."""
    now = time.time() if now is None else now
    stats = inbox_stats(files) if stats is None else stats
    busy = set(in_flight)
    plan = Plan(gone=sorted(set(known) - set(stats)))
    budget = _HashBudget(min(hash_budget_bytes, settings.max_file_mb << 20), hash_budget_bytes)
    candidates: dict[str, Path] = {}
    for key, stat in stats.items():
        if key in busy:
            plan.in_flight.add(key)
        elif now - stat.st_mtime < settle_s:
            plan.waiting.append(key)
        elif not force and _is_current(settings, target, key, files[key], stat, budget):
            plan.current.add(key)
        else:
            candidates[key] = files[key]
    plan.failed = {} if force or not candidates else failures(candidates)
    plan.work = [key for key in candidates if key not in plan.failed]
    return plan


def _is_current(
    settings: Settings, target: Target, key: str, path: Path, stat: os.stat_result, budget: _HashBudget
) -> bool:
    directory = settings.embeddings_dir / key
    stamp = read_stamp(directory)
    if stamp is None or stamp.version != target.document_version(settings, stamp.source_sha256):
        return False
    if not stamp.artifacts_intact(directory):  # damaged since: the run rebuilds them
        return False
    if stamp.matches(stat):
        return True
    if stat.st_size != stamp.source_size or not budget.take(stat.st_size):
        return False
    try:
        same = file_sha256(path) == stamp.source_sha256
    except OSError:
        return False
    if same:  # touched, same content: the stamp learns the new mtime, so the next plan needs no hash
        replace(stamp, source_mtime_ns=stat.st_mtime_ns).write(directory)
    return same


@dataclass
class _HashBudget:
    per_file: int
    remaining: int

    def take(self, size: int) -> bool:
        if size > self.per_file or size > self.remaining:
            return False
        self.remaining -= size
        return True
