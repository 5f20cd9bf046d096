"""The Python API: a folder of documents, indexed and searched by the same engine as the command line.

    from colqwen_pipeline import Index
    index = Index(home="my-index")                  # state, Milvus Lite file and inbox under my-index/
    index.add(["report.pdf", "scans/"])             # copied into the inbox, then `ingest`ed
    hits = index.search("revenue by quarter", top_k=5)
    index.remove("report.pdf")                      # the original moves to my-index/trash/

A thin facade: ``add`` is ``colqwen-pipeline ingest FILE`` (the same Dagster job, recorded on the
instance under ``home``), ``search`` is ``colqwen-pipeline search`` (which calls it), ``remove`` is the
web page's Remove. Heavy imports happen inside the methods, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.settings import Settings

if TYPE_CHECKING:
    from colqwen_pipeline.defs.runner import IngestSummary
    from colqwen_pipeline.index.base import Hit
    from colqwen_pipeline.service.trash import Trashed

log = logging.getLogger(__name__)


# The settings an ingest run takes from its caller (defs.resources.ColQwenResource's fields); the others
# come from COLQWEN_* and .env, for the runs as for everything else.
OVERRIDABLE = (
    "model",
    "base_model",
    "device",
    "precision",
    "batch_size",
    "max_visual_tokens",
    "model_server_url",
    "milvus_uri",
    "collection",
)


class Index:
    """The documents of one state directory. ``home`` alone puts the inbox at ``home/inbox`` and the Dagster
    instance at ``home/dagster``; without ``home`` every setting comes from ``COLQWEN_*`` and ``.env``, as
    for the command line. Keyword arguments of OVERRIDABLE set those settings (``model=``, ``milvus_uri=``)."""

    def __init__(self, home: str | Path | None = None, inbox: str | Path | None = None, **settings: Any):
        if unknown := sorted(set(settings) - set(OVERRIDABLE)):
            raise TypeError(f"Index() takes home, inbox, {', '.join(OVERRIDABLE)}; not {', '.join(unknown)}")
        if home is not None:
            settings["home"] = Path(home).expanduser()
            inbox = inbox if inbox is not None else settings["home"] / "inbox"
        if inbox is not None:
            settings["inbox"] = Path(inbox).expanduser()
        self.settings = Settings(**settings)
        self._own_home = home is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> Index:
        """The index of these settings, its Dagster instance found as the CLI finds it (DAGSTER_HOME first)."""
        index = cls.__new__(cls)
        index.settings, index._own_home = settings, False
        return index

    def add(self, paths: Iterable[str | Path]) -> IngestSummary:
        """Copy files (or folders, with their files) into the inbox unless they are in it already, then
        index them. A document that fails is listed in ``summary.failed`` with its one-line reason; the
        others are indexed. A file of the same name but other content replaces the inbox copy, whose old
        version moves to the trash."""
        from colqwen_pipeline.cli.preflight import preflight_ingest
        from colqwen_pipeline.defs.runner import ingest

        self.settings.inbox.mkdir(parents=True, exist_ok=True)
        preflight_ingest(self.settings)  # the CLI's one-line configuration errors, before anything is copied
        targets = [str(self._into_inbox(Path(path).expanduser())) for path in paths]
        if not targets:
            raise PipelineError("add() needs at least one file or folder")
        with self._dagster_home():
            return ingest(self.settings, targets, echo=log.info, trigger="api")

    def search(self, query: str, top_k: int = 5, docs: list[str] | None = None) -> list[Hit]:
        """Pages ranked by MaxSim, best first; ``docs`` restricts them to these documents (file name,
        path in the inbox or doc_id). An index with nothing in it raises ``EmptyIndex``."""
        from colqwen_pipeline.bulk.stages import search
        from colqwen_pipeline.cli.search_scope import require_documents, search_scope
        from colqwen_pipeline.embedding.registry import live_model_settings
        from colqwen_pipeline.index import make_index
        from colqwen_pipeline.service.limits import Refused, check_query

        try:
            check_query(query, self.settings)
        except Refused as refused:
            raise PipelineError(refused.detail) from None
        index = make_index(self.settings)
        doc_ids = search_scope(self.settings, index, docs or [])
        scoring = live_model_settings(
            self.settings
        )  # the model of the searched vectors (a rebuild may not have switched)
        hits = search(query, top_k=top_k, settings=scoring, doc_ids=doc_ids)
        if not hits and not doc_ids:
            require_documents(self.settings, index)  # every document removed since the last ingest: say so
        return hits

    def model(self) -> dict[str, Any]:
        """The model that scores searches: ``{"fingerprint", "random_weights", ...}``."""
        from colqwen_pipeline.embedding.identity import model_marker
        from colqwen_pipeline.embedding.registry import live_model_settings, model_identity

        return model_marker(model_identity(live_model_settings(self.settings)))

    def remove(self, doc: str | Path) -> Trashed | None:
        """Take a document out of the index and move its original into ``home/trash/`` (kept
        COLQWEN_TRASH_DAYS); returns the trash entry (None when only index rows were left)."""
        from colqwen_pipeline.service.limits import Refused
        from colqwen_pipeline.service.trash import Trash
        from colqwen_pipeline.service.uploads import WriteTurns, remove_document

        try:  # other processes' writes of the document take turns on its lock (common.document_locks)
            with self._dagster_home():
                return remove_document(self.settings, self.doc_id(doc), WriteTurns(), Trash(self.settings))
        except Refused as refused:  # removed by another process meanwhile
            raise PipelineError(refused.detail) from None

    def doc_id(self, doc: str | Path) -> str:
        """The doc_id of a document of the inbox or the index, given as its doc_id, file name or path."""
        from colqwen_pipeline.cli.search_scope import UnknownDocument, matching_keys
        from colqwen_pipeline.inbox import InboxError, inbox_files
        from colqwen_pipeline.index import make_index

        try:
            files = inbox_files(self.settings.inbox)
        except InboxError:
            files = {}
        keys = set(files) | make_index(self.settings).document_ids()
        matches = matching_keys(self.settings, keys, str(doc))
        if not matches:
            raise UnknownDocument(f"{doc}: no such document in {self.settings.inbox} or the index")
        if len(matches) > 1:
            raise UnknownDocument(f"{doc} names {len(matches)} documents ({', '.join(matches)}): give one of these")
        return matches[0]

    @contextlib.contextmanager
    def _dagster_home(self) -> Iterator[None]:
        """Runs and partitions go to ``home``'s Dagster instance. defs.instance finds the instance through
        DAGSTER_HOME, which it sets for the process on first use: an Index with its own home clears it for
        the call (then restores it), so two Index objects of two homes keep their runs apart. Not for
        concurrent use by several threads."""
        previous = os.environ.pop("DAGSTER_HOME", None) if self._own_home else None
        try:
            yield
        finally:
            if self._own_home:
                os.environ.pop("DAGSTER_HOME", None)
                if previous is not None:
                    os.environ["DAGSTER_HOME"] = previous

    def _into_inbox(self, path: Path) -> Path:
        """``path`` itself when it is inside the inbox, else its copy there (a folder keeps its tree)."""
        if not path.exists():
            raise PipelineError(f"{path}: no such file or folder")
        if path.resolve().is_relative_to(self.settings.inbox.resolve()):
            return path
        target = self.settings.inbox / path.name
        sources = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for source in sources:
            self._copy(source, target if source == path else target / source.relative_to(path))
        return target

    def _copy(self, source: Path, target: Path) -> None:
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            return  # already there: ingest finds it current
        if target.exists():
            from colqwen_pipeline.inbox import document_key
            from colqwen_pipeline.service.trash import Trash

            Trash(self.settings).put(document_key(target.relative_to(self.settings.inbox).as_posix()), target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
