"""``run_documents``: many documents through the four stages in one process, at the model's pace.

- Incremental: each stage compares the version of what its output depends on (bulk/versions.py)
  with the version recorded beside that output (manifest.json, pages.json, index.json) and is
  skipped when they match; ``force`` redoes everything.
- Overlapped: documents are read and rendered ahead by a pool of ``render_workers`` threads (each
  render is its own guarded subprocess) while the main thread embeds and indexes.
- Batched: the pages of a *wave* of documents go through the model together (batches are cut by
  visual-token count across documents), then the wave is written to Milvus through one
  connection in a few large inserts; each document stays all-or-nothing in search.
- Isolated: a document that cannot be read, rendered or passes no embedding check fails alone,
  with one line; the others of the run complete.
- Removal-safe: each write of a document's pages, embeddings and index rows holds its lock
  (common/document_locks.py), as a removal does, and first checks that its source file is still
  the one the run started from. A document removed (or replaced) while it ran is dropped, not
  written back and not failed, and takes no other document down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from colqwen_pipeline.bulk import versions
from colqwen_pipeline.bulk.stamps import IndexStamp, artifact_stats, read_stamp
from colqwen_pipeline.common.atomic import sweep_temporaries
from colqwen_pipeline.common.document_locks import document_locks
from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.documents.manifest import DocumentError, Manifest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.evaluation.checks import CheckOutcome, check_embeddings
from colqwen_pipeline.inbox import document_name, file_sha256, inbox_files, printable, readable
from colqwen_pipeline.index.base import DocumentIndex, DocumentRows, IndexRefused, PageRows
from colqwen_pipeline.index.milvus_rows import check_shapes
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
Log = Callable[[str], None]
STAGES = ("raw", "pages", "embeddings", "index")
MAX_DOCUMENT_CHARS = 1024  # the index's `document` VARCHAR


@dataclass
class StageOutcome:
    version: str
    changed: bool  # False: the output was already current, nothing was redone
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class DocumentResult:
    key: str
    path: Path | None = None
    document: str = ""  # path relative to the inbox
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    error: str = ""
    failed_stage: str = ""  # the first stage that did not complete; the stages before it did
    embedding_check: CheckOutcome | None = None  # set when the embeddings were (re)made
    pages_check: CheckOutcome | None = None  # set when the pages were (re)rendered
    source_id: tuple[int, int] | None = None  # (device, inode) of the file when the run reached it
    removed: bool = False  # removed or replaced while this run indexed it: dropped, nothing recorded

    @property
    def ok(self) -> bool:
        return not self.error

    def completed(self, stage: str) -> bool:
        """Did ``stage`` complete for this document (changed or already current)?"""
        if stage not in self.stages:
            return False
        return not self.failed_stage or STAGES.index(stage) < STAGES.index(self.failed_stage)

    @property
    def active(self) -> bool:
        """Still on its way through the stages."""
        return self.ok and not self.removed

    def source_gone(self) -> bool:
        """Is the file gone, or another file now (a delete, or a delete and a new upload of that name)?"""
        try:
            stat = os.stat(self.path) if self.path else None
        except OSError:
            return True
        return stat is None or (stat.st_dev, stat.st_ino) != self.source_id

    def drop(self) -> None:
        """Forget what this run did for it: no materialisation, no check, no failure."""
        self.removed, self.error = True, ""
        self.stages.clear()
        self.embedding_check = self.pages_check = None

    def fail(self, stage: str, error: BaseException | str) -> None:
        self.failed_stage = self.failed_stage or stage
        reason = str(error) if isinstance(error, PipelineError | str) else f"{type(error).__name__}: {error}"
        name = printable(self.document or self.key)
        for raw in {self.document, Path(self.document).name} - {""}:  # a newline in a name: one line still
            reason = reason.replace(raw, printable(raw))
        reason = reason.strip().splitlines()[0] if reason.strip() else type(error).__name__
        reason = reason.removeprefix(f"{printable(Path(self.document).name)}: ")  # renderers name the file alone
        self.error = reason if reason.startswith(name) else f"{name}: {reason}"
        self.error = f"{self.error} ({stage})" if stage not in ("raw", "pages") else self.error


@dataclass
class RunReport:
    documents: list[DocumentResult] = field(default_factory=list)
    forward: dict[str, Any] = field(default_factory=dict)  # forward-only figures of all waves
    model_load_s: float = 0.0
    model_loads: int = 0
    seconds: float = 0.0
    switched_to: str | None = None

    def count(self, stage: str) -> int:
        """Documents whose ``stage`` was redone in this run."""
        return sum(1 for d in self.documents if stage in d.stages and d.stages[stage].changed)

    @property
    def failed(self) -> dict[str, str]:
        return {d.key: d.error for d in self.documents if not d.ok}

    @property
    def removed(self) -> list[str]:
        return [d.key for d in self.documents if d.removed]

    @property
    def pages(self) -> int:
        return sum(int(d.stages["pages"].metadata.get("pages", 0)) for d in self.documents if "pages" in d.stages)

    @property
    def end_to_end_pages_per_s(self) -> float:
        embedded = self.forward.get("pages_forwarded", 0)
        return round(embedded / self.seconds, 3) if self.seconds > 0 and embedded else 0.0


class _Run:
    """State of one call: settings, the model identity, the index target, the report."""

    def __init__(self, settings: Settings, until: str, force: bool, say: Log, on_document: Callable | None):
        self.settings, self.force, self.say = settings, force, say
        self.stages = STAGES[: STAGES.index(until) + 1]
        self.on_document = on_document or (lambda _: None)
        self.report = RunReport()
        self._identity: Any = None
        self._cache: Any = None
        self._index: tuple[DocumentIndex, DocumentIndex, str | None, str] | None = None
        self._loading: threading.Thread | None = None  # the model loading while the first wave renders

    # -- shared, made on first use --------------------------------------------------------------
    @property
    def identity(self) -> Any:
        if self._identity is None:
            from colqwen_pipeline.embedding.registry import model_identity, open_cache

            self._identity = model_identity(self.settings)
            self._cache = open_cache(self.settings, self._identity)
        return self._identity

    @property
    def cache(self) -> Any:
        return self._cache if self.identity else None

    def index(self) -> tuple[DocumentIndex, DocumentIndex, str | None, str]:
        """(live index, write target, rebuild reason, physical collection of the target)."""
        if self._index is None:
            from colqwen_pipeline.index import make_index

            live = make_index(self.settings)
            fingerprint = self.identity.fingerprint
            reason = live.rebuild_reason(fingerprint)
            target = live.rebuild_target(fingerprint) if reason else live
            if reason:
                self.say(f"{reason}: writing into {target.collection}; search switches over once it is complete")
            self._index = (live, target, reason, live.rebuild_target(fingerprint).collection)
        return self._index

    def embedder(self) -> Any:
        from colqwen_pipeline.embedding.registry import get_embedder, loads_so_far

        if self._loading is not None and self._loading is not threading.current_thread():
            self._loading.join()  # counted once: by the thread that loads
        before, started = loads_so_far(), time.perf_counter()
        embedder = get_embedder(self.settings)
        if loads_so_far() > before:
            self.report.model_loads += 1
            self.report.model_load_s += round(time.perf_counter() - started, 3)
        return embedder

    # -- raw + pages: in the render pool ----------------------------------------------------------
    def prepare(self, key: str, path: Path | None) -> DocumentResult:
        result = DocumentResult(key, path)
        if path is None:
            result.fail("raw", f"{key}: no file in {self.settings.inbox} has this partition key (moved or deleted?)")
            return result
        result.document = document_name(self.settings.inbox, path)
        stage = "raw"
        if len(result.document) > MAX_DOCUMENT_CHARS:  # before any artifact: the index could not store it
            result.fail(
                "raw",
                f"{path.name[:80]}…: path is {len(result.document)} characters, over the "
                f"{MAX_DOCUMENT_CHARS} the index stores (shorten the folder or file name)",
            )
            return result
        try:
            stat = path.stat()
            result.source_id = (stat.st_dev, stat.st_ino)
            previous = _read_manifest(self.settings.pages_dir / key)
            result.stages["raw"] = self._raw(path, previous)
            if "pages" in self.stages:
                stage = "pages"
                result.stages["pages"] = self._pages(key, path, result.stages["raw"], previous, result)
                with self.locked([result]):  # written outside the lock: a removal may have run meanwhile
                    if result.removed:
                        shutil.rmtree(self.settings.pages_dir / key, ignore_errors=True)
        except Exception as error:  # noqa: BLE001 - one document must not take down the others
            if not isinstance(error, DocumentError | OSError):
                log.debug("preparing %s failed", key, exc_info=True)
            self._fail_unless_removed(result, stage, error)
        return result

    def _raw(self, path: Path, previous: Manifest | None) -> StageOutcome:
        stat = path.stat()
        cap = self.settings.max_file_mb * 1024 * 1024
        if stat.st_size > cap:  # before hashing: a huge file costs nothing to refuse
            raise DocumentError(
                f"{path.name}: file is {stat.st_size / 2**20:.0f} MB, over the cap of "
                f"{self.settings.max_file_mb} MB (COLQWEN_MAX_FILE_MB)"
            )
        same_file = previous is not None and (previous.source, previous.source_size, previous.source_mtime_ns) == (
            str(path.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
        )
        sha = previous.source_sha256 if same_file and previous else file_sha256(path)
        metadata = {
            "path": readable(str(path.resolve())),
            "relative_path": document_name(self.settings.inbox, path),
            "bytes": stat.st_size,
            "sha256": sha,
            "mtime_ns": stat.st_mtime_ns,
        }
        return StageOutcome(sha, previous is None or previous.source_sha256 != sha, metadata)

    def _pages(
        self, key: str, path: Path, raw: StageOutcome, previous: Manifest | None, result: DocumentResult
    ) -> StageOutcome:
        version = versions.pages_version(raw.version, self.settings)
        out = self.settings.pages_dir / key
        partial_refused = previous is not None and previous.skipped and not self.settings.allow_partial
        if previous is not None and previous.version == version and not self.force and not partial_refused:
            stat = (raw.metadata["bytes"], raw.metadata["mtime_ns"])
            if (previous.source_size, previous.source_mtime_ns) != stat:  # touched, same content: hash once
                replace(previous, source_size=stat[0], source_mtime_ns=stat[1]).write(out)
            if previous.skipped:  # still partial: its warning stands in this run too
                result.pages_check = check_pages(previous)
            return StageOutcome(version, False, _pages_metadata(previous, out))
        from colqwen_pipeline.documents import rasterize_document

        started = time.perf_counter()
        manifest = rasterize_document(path, out, self.settings, log=self.say, source_sha256=raw.version)
        stamped = replace(
            manifest,
            version=version,
            source_size=raw.metadata["bytes"],
            source_mtime_ns=raw.metadata["mtime_ns"],
        )
        stamped.write(out)
        result.pages_check = check_pages(stamped)
        return StageOutcome(version, True, _pages_metadata(stamped, out) | {"seconds": _since(started)})

    # -- embeddings + index: in waves on the main thread --------------------------------------------
    def run(self, keys: Sequence[str]) -> RunReport:
        started = time.perf_counter()
        if swept := sweep_temporaries([self.settings.pages_dir, self.settings.embeddings_dir]):
            self.say(f"removed {len(swept)} temporary folder(s) left by interrupted runs")
        files = inbox_files(self.settings.inbox)  # one walk of the inbox for the whole run
        wave: list[tuple[DocumentResult, Any]] = []
        wave_pages = 0
        workers = max(1, self.settings.render_workers)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render")
        try:
            futures = [pool.submit(self.prepare, key, files.get(key)) for key in keys]
            for number, future in enumerate(futures, 1):
                result = future.result()
                self.report.documents.append(result)
                if not result.active or "embeddings" not in self.stages:
                    self.on_document(result)
                    continue
                pending = self._plan(result)
                if self._loading is None and pending is not None and pending.missing:
                    self._loading = self._load_model_meanwhile()
                wave.append((result, pending))
                wave_pages += len(pending.missing) if pending else 0
                if wave_pages >= self.settings.embed_wave_pages:
                    self._flush(wave)
                    self._progress(number, len(keys), started)
                    wave, wave_pages = [], 0
            self._flush(wave)
        finally:  # on an interrupt: drop the renders not started yet, wait for the running ones
            pool.shutdown(wait=True, cancel_futures=True)
            if self._loading is not None:
                self._loading.join()
        if "index" in self.stages and self._index is not None:
            self._switch_if_complete()
        self.report.seconds = _since(started)
        self._progress(len(keys), len(keys), started)
        return self.report

    def _load_model_meanwhile(self) -> threading.Thread:
        """Load the model while the first wave renders, once a page needs it: this thread would
        otherwise wait for the renders, then for the load (a run with nothing to embed loads none)."""

        def load() -> None:
            with contextlib.suppress(Exception):  # a failed load is raised again by the wave that needs it
                self.embedder()

        thread = threading.Thread(target=load, name="model-load", daemon=True)
        thread.start()
        return thread

    def _plan(self, result: DocumentResult) -> Any:
        """The document's pending embedding, or None when its embeddings are current."""
        from colqwen_pipeline.embedding.document import plan_embedding
        from colqwen_pipeline.embedding.validate import token_counts

        out = self.settings.embeddings_dir / result.key
        version = versions.embeddings_version(result.stages["pages"].version, self.identity.fingerprint)
        previous = EmbeddingArtifact.read_or_none(out)
        if previous is not None and previous.version == version and not self.force:
            result.stages["embeddings"] = StageOutcome(version, False, _embeddings_metadata(previous))
            self._check_embeddings(result, previous, quiet=True)  # current, but still blocked if it fails
            return None
        try:
            counts = lambda: token_counts(self.identity, self.settings.token_pooling)  # noqa: E731
            return plan_embedding(self.settings.pages_dir / result.key, out, self.identity, self.cache, version, counts)
        except (OSError, ValueError, KeyError) as error:
            self._fail_unless_removed(result, "embeddings", error)
            return None

    def _flush(self, wave: list[tuple[DocumentResult, Any]]) -> None:
        if not wave:
            return
        self._embed_wave([(r, p) for r, p in wave if p is not None and r.active])
        if "index" in self.stages:
            self._index_wave([r for r, _ in wave if r.active])
        for result, _ in wave:
            self.on_document(result)

    def _embed_wave(self, wave: list[tuple[DocumentResult, Any]]) -> None:
        from colqwen_pipeline.embedding.document import embed_missing, finish_embedding, identity_metadata

        wave = self._embed_pages(wave, embed_missing)
        for result, pending in wave:
            try:
                with self.locked([result]):
                    if result.removed:
                        continue
                    artifact = finish_embedding(pending, self.identity, self.cache)
            except (OSError, ValueError) as error:
                self._fail_unless_removed(result, "embeddings", error)
                continue
            metadata = _embeddings_metadata(artifact) | pending.stats | identity_metadata(self.identity)
            result.stages["embeddings"] = StageOutcome(pending.version, True, metadata)
            self._check_embeddings(result, artifact)

    def _embed_pages(self, wave: list[tuple[DocumentResult, Any]], embed_missing: Callable) -> list:
        """The model forward of the wave's missing pages. A page file that vanished mid-wave is of a
        document being removed: that document is dropped and the rest of the wave embedded again."""
        while any(p.missing for _, p in wave):
            try:
                _accumulate(self.report.forward, embed_missing(self.embedder(), [p for _, p in wave], self.say))
                break
            except FileNotFoundError:
                removed = [r for r, _ in wave if self._drop_if_removed(r)]
                if not removed:
                    raise
                wave = [(r, p) for r, p in wave if not r.removed]
        return wave

    @contextlib.contextmanager
    def locked(self, results: Sequence[DocumentResult]) -> Iterator[None]:
        """The documents' locks, held around a write; on entry, drops those whose file is gone."""
        with document_locks(self.settings.home_dir, [r.key for r in results]):
            for result in results:
                self._drop_if_removed(result)
            yield

    def _drop_if_removed(self, result: DocumentResult) -> bool:
        if not result.removed and result.source_gone():
            result.drop()
            self.say(f"{printable(result.document or result.key)}: removed while it was being indexed; dropped")
        return result.removed

    def _fail_unless_removed(self, result: DocumentResult, stage: str, error: BaseException) -> None:
        """An error of a document whose file went away meanwhile is its removal, not a failure."""
        with self.locked([result]):
            if not result.removed:
                result.fail(stage, error)

    def _check_embeddings(self, result: DocumentResult, artifact: EmbeddingArtifact, quiet: bool = False) -> None:
        """Blocking, per document: embeddings that fail the check never reach Milvus. ``quiet``:
        unchanged embeddings report a check result only when it fails."""
        dim = self.settings.embedding_dim or self.identity.dim  # 0: the model family's width
        check = check_embeddings(artifact.directory, dim, self.settings.norm_tolerance)
        if not (quiet and check.passed):
            result.embedding_check = check
        if not check.passed:
            result.fail("embeddings", f"embedding check failed: {check.description}")

    def _index_wave(self, results: list[DocumentResult]) -> None:
        live, target, _, physical = self.index()
        todo: list[tuple[DocumentResult, str, EmbeddingArtifact]] = []
        for result in results:
            embeddings = result.stages["embeddings"]
            version = versions.index_version(
                embeddings.version, physical, target.schema_version, self.settings.index_centroids_per_page
            )
            try:
                todo.append((result, version, EmbeddingArtifact.read(self.settings.embeddings_dir / result.key)))
            except (OSError, ValueError, KeyError) as error:
                self._fail_unless_removed(result, "index", error)
        stored = target.token_counts_by_document([r.key for r, _, _ in todo])  # one query for the wave
        rows: list[DocumentRows] = []
        for result, version, artifact in todo:
            stamp = read_stamp(artifact.directory)
            current = stamp is not None and stamp.version == version and stored.get(result.key) == artifact.total_tokens
            if current and stamp is not None and not self.force:
                fresh = _stamp(result, version, stamp.tokens, artifact.directory)
                if stamp != fresh:  # touched, same content: the stamp learns the new mtime
                    fresh.write(artifact.directory)
                result.stages["index"] = StageOutcome(version, False, self._index_metadata(artifact, target))
                continue
            document = _document_rows(result, artifact)
            try:
                check_shapes(result.key, document.pages, artifact.dim)
            except IndexRefused as error:
                result.fail("index", error)
                continue
            rows.append(document)
        if not rows:
            return
        writing = {r.key: r for r, _, _ in todo}
        with self.locked([writing[d.doc_id] for d in rows]):
            rows = [d for d in rows if not writing[d.doc_id].removed]
            started = time.perf_counter()
            written = target.replace_documents(rows, self.identity.fingerprint, self.identity.dim) if rows else {}
            seconds = _since(started)
            for result, version, artifact in todo:
                if result.key in written:
                    _stamp(result, version, written[result.key], artifact.directory).write(artifact.directory)
                    metadata = self._index_metadata(artifact, target) | {"write_seconds_of_wave": seconds}
                    result.stages["index"] = StageOutcome(version, True, metadata)

    def _index_metadata(self, artifact: EmbeddingArtifact, target: DocumentIndex) -> dict[str, Any]:
        return {"tokens_indexed": artifact.total_tokens, "collection": target.collection, "uri": target.uri}

    def _switch_if_complete(self) -> None:
        """A rebuild (new model or index schema) goes live once it serves every document the live
        index serves: across as many runs as it takes, search is never empty or mixed."""
        live, target, reason, _ = self.index()
        if reason is None:
            return
        missing = live.document_ids() - target.document_ids()
        if missing:
            self.say(f"rebuild of {target.collection}: {len(missing)} served document(s) still to go, not switching")
            return
        live.switch_to(self.identity.fingerprint)
        self.report.switched_to = self.identity.fingerprint
        self.say(f"search now uses {self.identity.fingerprint} ({target.collection})")

    def _progress(self, done: int, total: int, started: float) -> None:
        r = self.report
        self.say(
            f"[{done}/{total} documents, {_since(started):.1f} s] rendered {r.count('pages')}, "
            f"embedded {r.count('embeddings')} ({r.forward.get('pages_forwarded', 0)} pages through the model), "
            f"indexed {r.count('index')}, failed {len(r.failed)}"
        )


def run_documents(
    settings: Settings,
    keys: Sequence[str],
    *,
    until: str = "index",
    force: bool = False,
    say: Log = log.info,
    on_document: Callable[[DocumentResult], None] | None = None,
) -> RunReport:
    """Bring the documents ``keys`` up to date through the stages up to ``until``; ``on_document``
    is called as each document finishes (ok or failed). Configuration errors (model, Milvus, inbox)
    raise; a document's own trouble is its ``error``."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the engine's numpy work (k-means centroids, checks) is small per call, and a
    # multi-threaded OpenBLAS beside torch's threads, render threads and Milvus Lite's in-process
    # server was seen to spin forever in exec_blas (200 documents on the 2-core box).
    with threadpool_limits(limits=1, user_api="blas"):
        return _Run(settings, until, force, say, on_document).run(keys)


# -- small helpers ----------------------------------------------------------------------------------
def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _accumulate(total: dict[str, Any], figures: dict[str, Any]) -> None:
    for name in ("pages_forwarded", "model_forwards", "oom_backoffs", "forward_seconds"):
        total[name] = round(total.get(name, 0) + figures[name], 3)
    total["batch_size"] = figures["batch_size"]
    total["batch_size_used"] = max(total.get("batch_size_used", 0), figures["batch_size_used"])
    if figures.get("peak_gpu_mem_mb") is not None:
        total["peak_gpu_mem_mb"] = max(total.get("peak_gpu_mem_mb", 0.0), figures["peak_gpu_mem_mb"])
    seconds = total["forward_seconds"]
    total["forward_pages_per_s"] = round(total["pages_forwarded"] / seconds, 3) if seconds > 0 else 0.0


def _read_manifest(directory: Path) -> Manifest | None:
    """The previous manifest, or None when there is none or it cannot be read (then: re-render)."""
    try:
        return Manifest.read(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stamp(result: DocumentResult, version: str, tokens: int, directory: Path) -> IndexStamp:
    raw = result.stages["raw"].metadata
    return IndexStamp(version, tokens, raw["bytes"], raw["mtime_ns"], raw["sha256"], artifact_stats(directory))


def _pages_metadata(manifest: Manifest, directory: Path) -> dict[str, Any]:
    return {
        "pages": len(manifest.pages),
        "rendered": manifest.summary(),  # "N of M pages rendered; skipped: 7 (reason)"
        "pages_skipped": len(manifest.skipped),
        "kind": manifest.kind,
        "renderer": manifest.pages[0].renderer if manifest.pages else "",
        "path": str(directory),
    }


def check_pages(manifest: Manifest) -> CheckOutcome:
    """pages_complete (WARN): a partial document is indexed, and this says which pages it lacks."""
    skipped = [{"page": s.page, "reason": s.reason} for s in manifest.skipped]
    metadata = {"pages_rendered": len(manifest.pages), "pages_skipped": len(skipped)}
    return CheckOutcome(manifest.complete, manifest.summary(), metadata, {"skipped_pages": skipped})


def _embeddings_metadata(artifact: EmbeddingArtifact) -> dict[str, Any]:
    return {"pages": len(artifact.pages), "tokens": artifact.total_tokens, "path": str(artifact.directory)}


def _document_rows(result: DocumentResult, artifact: EmbeddingArtifact) -> DocumentRows:
    pages = [
        PageRows(p["page"], p["sha256"], artifact.page_vectors(i), p["image"]) for i, p in enumerate(artifact.pages)
    ]
    return DocumentRows(result.key, result.document, pages)
