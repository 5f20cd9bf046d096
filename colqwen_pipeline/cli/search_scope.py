"""What a CLI search or evaluation covers: ``--doc`` names turned into document keys, and an
index with nothing in it said as such (an empty result list would read as "no match")."""

from __future__ import annotations

from pathlib import Path

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.inbox import InboxError, document_key, document_name, inbox_files, printable, readable
from colqwen_pipeline.index.base import DocumentIndex
from colqwen_pipeline.settings import Settings

LISTED_DOCUMENTS = 20  # a miss lists at most this many valid names


class EmptyIndex(PipelineError):
    """The collection holds no document: searching or evaluating it would report only zeros."""

    exit_code = 1  # a state, not a usage error (those exit 2)


class UnknownDocument(PipelineError):
    """A ``--doc`` that is neither an indexed document's key nor its file name."""


def empty_index_message(settings: Settings) -> str:
    return (
        f"the index at {settings.resolved_milvus_uri} is empty: put documents in {settings.inbox.resolve()} "
        "and run `colqwen-pipeline ingest`"
    )


def require_documents(settings: Settings, index: DocumentIndex) -> set[str]:
    """The indexed document keys; EmptyIndex when there are none."""
    keys = index.document_ids() if index.live_fingerprint() is not None else set()
    if not keys:
        raise EmptyIndex(empty_index_message(settings))
    return keys


def search_scope(settings: Settings, index: DocumentIndex, wanted: list[str]) -> list[str] | None:
    """The document keys a search covers (None: all). An index never written to is refused here,
    before the query model loads; one emptied since is found by its empty result."""
    if wanted:
        return resolve_documents(settings, index, wanted)
    if index.live_fingerprint() is None:
        raise EmptyIndex(empty_index_message(settings))
    return None


def indexed_names(settings: Settings, keys: set[str]) -> dict[str, str]:
    """Key -> path relative to the inbox as users see it (inbox.readable), for the indexed documents
    still in the inbox (others: the key)."""
    try:
        files = inbox_files(settings.inbox)
    except InboxError:  # searching from another folder: the keys still work
        files = {}
    return {key: document_name(settings.inbox, files[key]) if key in files else key for key in keys}


def resolve_documents(settings: Settings, index: DocumentIndex, wanted: list[str]) -> list[str]:
    """Each ``--doc`` as a key, a path relative to the inbox, a path to the file, or a bare file
    name (every document of that name); UnknownDocument lists the valid ones on a miss."""
    keys = require_documents(settings, index)
    names = indexed_names(settings, keys)
    resolved: list[str] = []
    for name in wanted:
        matches = _matches(settings, keys, names, name)
        if not matches:
            raise UnknownDocument(_miss_message(name, names))
        resolved += [key for key in matches if key not in resolved]
    return resolved


def matching_keys(settings: Settings, keys: set[str], name: str) -> list[str]:
    """The keys among ``keys`` that ``name`` denotes: a key, a path (in the inbox or to the file), a file name."""
    return _matches(settings, keys, indexed_names(settings, keys), name)


def _matches(settings: Settings, keys: set[str], names: dict[str, str], name: str) -> list[str]:
    if name in keys:
        return [name]
    candidates = [document_key(name), _key_of_path(settings, name)]
    found = [key for key in candidates if key in keys]
    shown = readable(name)  # a name typed as its bytes or as it is shown
    return found[:1] or sorted(key for key, relative in names.items() if Path(relative).name == shown)


def _key_of_path(settings: Settings, name: str) -> str:
    path, inbox = Path(name).resolve(), settings.inbox.resolve()
    return document_key(path.relative_to(inbox).as_posix()) if path.is_relative_to(inbox) else ""


def _miss_message(name: str, names: dict[str, str]) -> str:
    listed = [relative if relative == key else f"{relative} ({key})" for key, relative in sorted(names.items())]
    more = f", and {len(listed) - LISTED_DOCUMENTS} more" if len(listed) > LISTED_DOCUMENTS else ""
    return f"--doc '{printable(name)}' is no indexed document; indexed: {', '.join(listed[:LISTED_DOCUMENTS])}{more}"
