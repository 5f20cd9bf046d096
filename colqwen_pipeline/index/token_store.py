"""Page token vectors outside Milvus: compact, append-only, memory-mapped files beside the collections.

Why: Milvus Lite holds every field of a loaded collection in anonymous memory (705 KB a page with
fp16 tokens in VARCHAR rows) and a 2.3 server does too (~256 KB a page), and every exact-stage RPC
carried the tokens. Here the tokens sit in files the searcher maps: reading them fills the page
cache, not the process's anonymous memory, and the Milvus rows keep only a record number.

``TokenStore`` is the interface the index uses; ``SegmentStore`` the implementation. One store per
physical collection (a new model or schema gets new collections, so a new store: search never
mixes two models). Layout of a store folder:

``store.json``       format, dim, bits, centroids per page (checked on open)
``records.bin``      one fixed-size entry per stored page (``RECORD``); an entry exists only once
                     its tokens and centroids are on disk (the store's commit point)
``centroids.f16``    per record, ``centroids`` fp16 k-means centroids (the Lite first stage scans them)
``seg-NNNNNN.tok``   token payloads, appended; a new segment past ``SEGMENT_BYTES``
``tombstones.bin``   int64 record numbers no Milvus row references any more
``lock``             flock of writers (the CLI ingest and the web server may write at once)

Tokens are quantised to ``bits`` per dimension (7 by default) with an fp16 scale per token:
88.9 KB for a 780 x 128 page. Measured on 1,000 synthetic pages against exact fp16 MaxSim
(docs/search.md): recall@5 0.996 at 6, 7 and 8 bits; page scores off by more than the fidelity
check's fp16 tolerance (2^-10 per query token): 5.5% of pages at 6 bits, 0.004% at 7, none at 8;
8 bits cost 101.4 KB a page, over the 100 KB disk goal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colqwen_pipeline.index.base import IndexRefused

FORMAT = 1
SEGMENT_BYTES = 256 << 20  # segments stay small enough to delete once every record in one is dead
RECORD = np.dtype(
    [
        ("segment", "<u4"),
        ("n_tokens", "<u4"),
        ("offset", "<u8"),
        ("page_uid", "<i8"),
        ("doc_hash", "<u8"),
        ("written_ns", "<u8"),
    ]
)
SCAN_BYTES = 32 << 20  # similarity block of the centroid scan: memory stays bounded at any size
CACHE_PAGES = 4096  # pages per block of the scan's fp32 centroid copy (``CentroidCache``)


def doc_hash(doc_id: str) -> int:
    """64 bits of a document id: the scan filters by document without the ids (a clash only adds
    a candidate, which the Milvus row then rejects)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


# -- the codec: ``bits`` per dimension, an fp16 scale per token ------------------------------------
def encoded_bytes(n_tokens: int, dim: int, bits: int) -> int:
    return n_tokens * (_padded(dim) * bits // 8 + 2)


def _padded(dim: int) -> int:
    return -(-dim // 8) * 8  # 8 codes of ``bits`` bits pack into ``bits`` bytes


def encode_tokens(vectors: np.ndarray, bits: int) -> bytes:
    """Symmetric quantisation per token (scale = max |x| / levels), codes packed 8 per ``bits`` bytes,
    then the fp16 scales."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    levels = (1 << (bits - 1)) - 1
    scales = (np.abs(vectors).max(axis=1, initial=0.0) / levels).astype(np.float16)
    safe = np.where(scales == 0, 1, scales).astype(np.float32)
    codes = np.zeros((n, _padded(dim)), dtype=np.uint64)
    codes[:, :dim] = np.clip(np.rint(vectors / safe[:, None]), -levels, levels) + levels
    codes[:, dim:] = levels
    groups = codes.reshape(-1, 8) << np.arange(0, 8 * bits, bits, dtype=np.uint64)
    packed = np.bitwise_or.reduce(groups, axis=1).view(np.uint8).reshape(-1, 8)[:, :bits]
    return packed.tobytes() + scales.tobytes()


def decode_tokens(payload: bytes | memoryview, n_tokens: int, dim: int, bits: int) -> np.ndarray:
    """The fp32 tokens of ``encode_tokens``' bytes."""
    code_bytes = n_tokens * _padded(dim) * bits // 8
    raw = np.frombuffer(payload, dtype=np.uint8, count=code_bytes + 2 * n_tokens)
    padded = np.zeros((code_bytes // bits, 8), dtype=np.uint8)
    padded[:, :bits] = raw[:code_bytes].reshape(-1, bits)
    words = padded.view(np.uint64)
    codes = (words >> np.arange(0, 8 * bits, bits, dtype=np.uint64)) & np.uint64((1 << bits) - 1)
    vectors = codes.astype(np.float32).reshape(n_tokens, -1)[:, :dim]
    vectors -= (1 << (bits - 1)) - 1
    vectors *= raw[code_bytes:].view(np.float16).astype(np.float32)[:, None]
    return vectors


@dataclass(frozen=True)
class NewPage:
    """What the store keeps of one page."""

    page_uid: int
    doc_id: str
    vectors: np.ndarray  # (tokens, dim)
    centroids: np.ndarray  # (<= centroids, dim)


class TokenStore(ABC):
    """Token vectors (and first-stage centroids) of the pages of one physical collection."""

    dim: int

    @abstractmethod
    def append(self, pages: Sequence[NewPage]) -> list[int]:
        """Store pages durably (fsync'd on return); their record numbers, for the Milvus rows."""

    @abstractmethod
    def read(self, records: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        """(page uid, fp32 tokens) of each record."""

    @abstractmethod
    def retire(self, records: Sequence[int]) -> None:
        """Records no row references any more (superseded or deleted pages): the scan skips them."""

    @abstractmethod
    def scan(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]:
        """Per query, the page uids of the ``depth`` best live records by approximate MaxSim over
        their centroids (sum over query tokens of the best centroid similarity)."""

    @abstractmethod
    def live_records(self) -> int: ...

    @abstractmethod
    def reclaim(self, referenced: set[int], older_than_s: float) -> int:
        """Retire records older than ``older_than_s`` that no row references (left by a crash between
        the tokens and the rows) and delete segments with no live record; returns records retired."""


class SegmentStore(TokenStore):
    """``TokenStore`` in append-only segment files (the module docstring has the layout)."""

    def __init__(self, folder: Path, dim: int, centroids: int, bits: int = 7):
        self.folder, self.dim, self.centroids, self.bits = Path(folder), dim, centroids, bits
        self._maps: dict[str, tuple[int, mmap.mmap | None]] = {}
        self._dead = np.zeros(0, dtype=bool)
        self._tombstones_read = 0
        self._centroids = CentroidCache(centroids, dim)

    def __getstate__(self) -> dict:
        """A store sent to another process (the bench searches from a fresh one) maps its files anew."""
        return self.__dict__ | {"_maps": {}}

    # -- files -------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.folder / name

    def _create_or_check(self) -> None:
        meta = {"format": FORMAT, "dim": self.dim, "bits": self.bits, "centroids": self.centroids}
        path = self._path("store.json")
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            draft = self._path(".store.json")
            draft.write_text(json.dumps(meta))
            draft.rename(path)
            _fsync_folder(self.folder)
        self._check(path, meta)

    def _check(self, path: Path, meta: dict) -> None:
        found = json.loads(path.read_text())
        if found != meta:
            raise IndexRefused(f"token store {self.folder} holds {found}, this index expects {meta}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._path("lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _view(self, name: str, at_least: int | None = None) -> memoryview:
        """A read-only map of a file. Without ``at_least`` the file is asked for its size (it may
        have grown); with it, the current map serves when it is that long. An old map is dropped,
        not closed: arrays of earlier reads may still point into it."""
        size, mapped = self._maps.get(name, (0, None))
        if mapped is not None and at_least is not None and size >= at_least:
            return memoryview(mapped)
        path = self._path(name)
        current = path.stat().st_size if path.exists() else 0
        if current != size or (mapped is None and current):
            mapped = None
            if current:
                with open(path, "rb") as file:
                    mapped = mmap.mmap(file.fileno(), current, access=mmap.ACCESS_READ)
            self._maps[name] = (current, mapped)
        return memoryview(mapped) if mapped is not None else memoryview(b"")

    def _records(self) -> np.ndarray:
        view = self._view("records.bin")
        return np.frombuffer(view, dtype=RECORD, count=len(view) // RECORD.itemsize)

    def _centroid_slot(self) -> int:
        return self.centroids * self.dim * 2

    # -- writes ------------------------------------------------------------------------------------
    def append(self, pages: Sequence[NewPage]) -> list[int]:
        if not pages:
            return []
        self._create_or_check()
        with self._locked():
            first = self._whole_records()
            segment, offset = self._segment_for_append()
            entries = np.zeros(len(pages), dtype=RECORD)
            with open(self._path(_segment_name(segment)), "ab") as tokens:
                for i, page in enumerate(pages):
                    payload = encode_tokens(page.vectors, self.bits) if len(page.vectors) else b""
                    tokens.write(payload)
                    entries[i] = (segment, len(page.vectors), offset, page.page_uid, doc_hash(page.doc_id), 0)
                    offset += len(payload)
                _durable(tokens)
            with open(self._path("centroids.f16"), "r+b" if self._path("centroids.f16").exists() else "wb") as file:
                file.seek(first * self._centroid_slot())  # past what a crashed writer may have left
                file.write(b"".join(self._centroid_block(page.centroids) for page in pages))
                _durable(file)
            entries["written_ns"] = time.time_ns()
            with open(self._path("records.bin"), "ab") as records:
                records.write(entries.tobytes())  # the commit point: tokens and centroids are on disk
                _durable(records)
        return list(range(first, first + len(pages)))

    def _whole_records(self) -> int:
        """Records on disk; a torn entry of a crashed writer is cut off (under the writers' lock)."""
        path = self._path("records.bin")
        size = path.stat().st_size if path.exists() else 0
        if size % RECORD.itemsize:
            os.truncate(path, size - size % RECORD.itemsize)
        return size // RECORD.itemsize

    def _segment_for_append(self) -> tuple[int, int]:
        segments = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("seg-*.tok"))
        segment = segments[-1] if segments else 0
        size = self._path(_segment_name(segment)).stat().st_size if segments else 0
        if size >= SEGMENT_BYTES:
            segment, size = segment + 1, 0
        if size == 0:
            self._path(_segment_name(segment)).touch()
            _fsync_folder(self.folder)
        return segment, size

    def _centroid_block(self, centroids: np.ndarray) -> bytes:
        """A fixed slot: fewer centroids than the slot holds repeat the last (the max is unchanged)."""
        block = np.zeros((self.centroids, self.dim), dtype=np.float16)
        if len(centroids):
            block[: len(centroids)] = centroids[: self.centroids]
            block[len(centroids) :] = centroids[min(len(centroids), self.centroids) - 1]
        return block.tobytes()

    def retire(self, records: Sequence[int]) -> None:
        if not records:
            return
        self._create_or_check()
        with self._locked(), open(self._path("tombstones.bin"), "ab") as file:
            file.write(np.asarray(sorted(set(records)), dtype="<i8").tobytes())
            _durable(file)

    def reclaim(self, referenced: set[int], older_than_s: float) -> int:
        if not self._path("records.bin").exists():
            return 0
        self._refresh()
        records = self._records()
        cutoff = time.time_ns() - int(older_than_s * 1e9)
        numbers = np.arange(len(records))
        candidates = numbers[~self._dead[: len(records)] & (records["written_ns"] < cutoff)]
        orphans = [int(r) for r in candidates if int(r) not in referenced]
        self.retire(orphans)
        self._refresh()
        with self._locked():
            live_segments = set(records["segment"][~self._dead[: len(records)]].tolist())
            newest = int(records["segment"].max()) if len(records) else 0
            for path in self.folder.glob("seg-*.tok"):
                number = int(path.stem.split("-")[1])
                if number < newest and number not in live_segments:
                    path.unlink()  # no live row points into it; open maps of readers stay valid
        return len(orphans)

    # -- reads -------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Take in records and tombstones written since the last call (other processes append)."""
        self._grow_dead(len(self._records()))
        view = self._view("tombstones.bin")
        whole = len(view) // 8 * 8
        if whole > self._tombstones_read:
            retired = np.frombuffer(view[self._tombstones_read : whole], dtype="<i8")
            self._grow_dead(int(retired.max()) + 1)
            self._dead[retired] = True
            self._tombstones_read = whole

    def _grow_dead(self, count: int) -> None:
        if len(self._dead) < count:
            self._dead = np.concatenate([self._dead, np.zeros(count - len(self._dead), dtype=bool)])

    def read(self, records: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        table = self._records()
        if records and max(records) >= len(table):
            raise IndexRefused(f"token store {self.folder}: record {max(records)} of {len(table)} not found")
        out = []
        for record in records:
            entry = table[record]
            n_tokens = int(entry["n_tokens"])
            size = encoded_bytes(n_tokens, self.dim, self.bits)
            start = int(entry["offset"])
            view = self._view(_segment_name(int(entry["segment"])), start + size)
            if len(view) < start + size:
                raise IndexRefused(f"token store {self.folder}: record {record} runs past its segment")
            vectors = (
                decode_tokens(view[start : start + size], n_tokens, self.dim, self.bits)
                if n_tokens
                else np.zeros((0, self.dim), dtype=np.float32)
            )
            out.append((int(entry["page_uid"]), vectors))
        return out

    def live_records(self) -> int:
        if not self._path("records.bin").exists():
            return 0
        self._refresh()
        return int((~self._dead).sum())

    def scan(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]:
        if not queries or not self._path("records.bin").exists():
            return [[] for _ in queries]
        self._refresh()
        records = self._records()
        count = len(records)
        tokens = np.concatenate([np.asarray(q, dtype=np.float32) for q in queries])
        scores = self._centroids.scores(self._centroid_view(count), tokens, [len(q) for q in queries])
        excluded = self._dead[:count].copy()
        if doc_ids is not None:
            excluded |= ~np.isin(records["doc_hash"], np.asarray([doc_hash(d) for d in doc_ids], dtype=np.uint64))
        scores[:, excluded] = -np.inf
        depth = min(depth, int((~excluded).sum()))
        ranked = []
        for row in scores:
            top = np.argpartition(-row, depth - 1)[:depth] if depth else np.zeros(0, dtype=np.int64)
            top = top[np.argsort(-row[top], kind="stable")]
            ranked.append(records["page_uid"][top].tolist())
        return ranked

    def _centroid_view(self, count: int) -> np.ndarray:
        """The first ``count`` records' fp16 centroids as mapped: (count, centroids, dim)."""
        view = self._view("centroids.f16", count * self._centroid_slot())
        centroids = np.frombuffer(view, dtype=np.float16, count=count * self.centroids * self.dim)
        return centroids.reshape(count, self.centroids, self.dim)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*") if p.is_file())


class CentroidCache:
    """fp32 copies of a store's centroids for the scan, in blocks of ``CACHE_PAGES`` pages, each
    slot-major ((centroids, pages, dim)): a page's best centroid is then an elementwise maximum of
    ``centroids`` contiguous fp32 products. Measured at 100,000 pages (800,000 centroids, one 25-token
    query, numpy/OpenBLAS on 2 cores): scanning the mapped fp16 in blocks 1,110 ms (the fp16 to fp32
    conversion dominates), this 93 ms. Costs 4 KB of anonymous memory a page at 8 x 128 (the issue's
    budget is 16 KB); records are append-only, so a cached page never changes."""

    def __init__(self, centroids: int, dim: int):
        self.centroids, self.dim = centroids, dim
        self.blocks: list[np.ndarray] = []
        self.cached = 0
        self._lock = threading.Lock()  # the web server searches from several threads

    def __getstate__(self) -> dict:
        """Pickled empty (a lock cannot travel; the copies are rebuilt from the store's files)."""
        return {"centroids": self.centroids, "dim": self.dim}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["centroids"], state["dim"])  # type: ignore[misc]

    def _catch_up(self, source: np.ndarray) -> None:
        """Convert the records added since the last call (``source``: every record's fp16 centroids)."""
        with self._lock:
            self._convert(source)

    def _convert(self, source: np.ndarray) -> None:
        while self.cached < len(source):
            block, offset = divmod(self.cached, CACHE_PAGES)
            if block == len(self.blocks):  # untouched pages of an empty block cost no memory
                self.blocks.append(np.empty((self.centroids, CACHE_PAGES, self.dim), dtype=np.float32))
            end = min(len(source), (block + 1) * CACHE_PAGES)
            self.blocks[block][:, offset : offset + end - self.cached] = source[self.cached : end].transpose(1, 0, 2)
            self.cached = end

    def scores(self, source: np.ndarray, tokens: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """(queries, pages): per query (``lengths`` consecutive rows of ``tokens``), the sum over its
        tokens of each page's best centroid similarity; in steps of at most ``SCAN_BYTES`` of products."""
        self._catch_up(source)
        count = len(source)
        starts = np.cumsum([0, *lengths[:-1]])
        scores = np.empty((len(lengths), count), dtype=np.float32)
        step = max(1, SCAN_BYTES // (4 * len(tokens)))
        for block_number, block in enumerate(self.blocks):
            first = block_number * CACHE_PAGES
            for start in range(0, min(CACHE_PAGES, count - first), step):
                stop = min(CACHE_PAGES, count - first, start + step)
                best = block[0, start:stop] @ tokens.T
                for slot in range(1, self.centroids):
                    np.maximum(best, block[slot, start:stop] @ tokens.T, out=best)
                scores[:, first + start : first + stop] = np.add.reduceat(best, starts, axis=1).T
        return scores


def _segment_name(segment: int) -> str:
    return f"seg-{segment:06d}.tok"


def _durable(file) -> None:
    file.flush()
    os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
