"""Evaluation sets: queries with their relevant pages, from our JSONL file or a BEIR/ViDoRe layout.

JSONL (one query a line, see data/README.md)::

    {"query_id": "q3", "query": "...", "relevant": [{"document": "report.pdf", "page": 3}]}

BEIR/ViDoRe layout (a directory)::

    corpus.jsonl        {"_id": "c7", "document": "report.pdf", "page": 3}   (page 1-based, default 1)
    queries.jsonl       {"_id": "q3", "text": "..."}
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score   (header line; score > 0 is relevant)

Documents are paths relative to the inbox; a page is identified in the index as ``<doc_id>#<page>``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.inbox import document_key


class EvalSetError(ValueError, PipelineError):
    """An evaluation set that cannot be read; the message names the file, the line and the cause."""


def page_id(doc_id: str, page: int) -> str:
    """How the evaluation names a page, to compare a ranking of hits with the relevant pages."""
    return f"{doc_id}#{page}"


@dataclass(frozen=True)
class RelevantPage:
    document: str  # relative to the inbox
    page: int  # 1-based
    grade: int = 1

    @property
    def doc_id(self) -> str:
        return document_key(self.document)

    @property
    def page_id(self) -> str:
        return page_id(self.doc_id, self.page)


@dataclass(frozen=True)
class EvalQuery:
    query_id: str
    query: str
    relevant: tuple[RelevantPage, ...]

    @property
    def relevance(self) -> dict[str, int]:
        """Page id -> grade, the form the metrics take."""
        return {r.page_id: r.grade for r in self.relevant}

    @property
    def doc_ids(self) -> set[str]:
        return {r.doc_id for r in self.relevant}


def load_eval_set(path: Path, split: str = "test") -> list[EvalQuery]:
    """Our JSONL file, or a BEIR/ViDoRe directory (``split`` picks ``qrels/<split>.tsv``)."""
    path = Path(path)
    if path.is_dir():
        return _load_beir(path, split)
    if not path.is_file():
        where = "" if path.is_absolute() else f", relative to the working directory {Path.cwd()}"  # as the inbox says
        raise EvalSetError(
            f"{path}: evaluation set not found{where} (run from the repository root, or set COLQWEN_EVAL_SET "
            "or --eval-set to a JSONL file or BEIR directory)"
        )
    queries = [_parse_query(record, f"{path}:{line}") for line, record in _jsonl(path)]
    if not queries:
        raise EvalSetError(f"{path}: no queries")
    _check_unique([q.query_id for q in queries], path)
    return queries


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise EvalSetError(f"{path}:{line}: not JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise EvalSetError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
            yield line, record


def _parse_query(record: dict[str, Any], where: str) -> EvalQuery:
    for name in ("query_id", "query", "relevant"):
        if name not in record:
            raise EvalSetError(f"{where}: missing {name!r}")
    relevant = record["relevant"]
    if not isinstance(relevant, list) or not relevant:
        raise EvalSetError(f"{where}: 'relevant' must be a non-empty list of {{'document', 'page'}}")
    pages = tuple(_parse_page(item, where) for item in relevant)
    return EvalQuery(str(record["query_id"]), str(record["query"]), pages)


def _parse_page(item: Any, where: str) -> RelevantPage:
    if not isinstance(item, dict) or "document" not in item:
        raise EvalSetError(f"{where}: each relevant entry needs 'document' (path relative to the inbox)")
    page = item.get("page", 1)
    if not isinstance(page, int) or isinstance(page, bool) or page < 1:
        raise EvalSetError(f"{where}: page {page!r} of {item['document']!r} is not a 1-based page number")
    grade = item.get("grade", 1)
    if not isinstance(grade, int) or grade < 1:
        raise EvalSetError(f"{where}: grade {grade!r} must be a positive integer")
    return RelevantPage(str(item["document"]), page, grade)


def _check_unique(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    for query_id in ids:
        if query_id in seen:
            raise EvalSetError(f"{path}: query id {query_id!r} appears twice")
        seen.add(query_id)


# -- BEIR / ViDoRe --------------------------------------------------------------------------------
def _load_beir(directory: Path, split: str) -> list[EvalQuery]:
    corpus = {
        _field(r, ("_id", "corpus-id", "corpus_id"), f"{directory}/corpus.jsonl:{n}"): _parse_page(
            r, f"{directory}/corpus.jsonl:{n}"
        )
        for n, r in _jsonl(_required(directory / "corpus.jsonl"))
    }
    texts = {
        _field(r, ("_id", "query-id", "query_id"), f"{directory}/queries.jsonl:{n}"): str(
            _field(r, ("text", "query"), f"{directory}/queries.jsonl:{n}")
        )
        for n, r in _jsonl(_required(directory / "queries.jsonl"))
    }
    qrels = _read_qrels(_qrels_file(directory, split), corpus, texts)
    queries = [
        EvalQuery(query_id, texts[query_id], tuple(RelevantPage(p.document, p.page, g) for p, g in pages))
        for query_id, pages in qrels.items()
        if pages
    ]
    if not queries:
        raise EvalSetError(f"{directory}: no query has a relevant page in its qrels")
    return queries


def _required(path: Path) -> Path:
    if not path.is_file():
        raise EvalSetError(f"{path}: missing (a BEIR layout needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    return path


def _field(record: dict[str, Any], names: tuple[str, ...], where: str) -> str:
    for name in names:
        if name in record:
            return str(record[name])
    raise EvalSetError(f"{where}: missing {names[0]!r}")


def _qrels_file(directory: Path, split: str) -> Path:
    for candidate in (directory / "qrels" / f"{split}.tsv", directory / "qrels.tsv"):
        if candidate.is_file():
            return candidate
    raise EvalSetError(f"{directory}: no qrels/{split}.tsv (or qrels.tsv)")


def _read_qrels(
    path: Path, corpus: dict[str, RelevantPage], texts: dict[str, str]
) -> dict[str, list[tuple[RelevantPage, int]]]:
    qrels: dict[str, list[tuple[RelevantPage, int]]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or (line == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or the header
            if len(row) < 3:
                raise EvalSetError(f"{path}:{line}: expected query-id, corpus-id, score")
            query_id, corpus_id = row[0], row[2] if len(row) >= 4 else row[1]  # 4 columns: TREC "qid 0 doc rel"
            try:
                score = int(row[-1])
            except ValueError as error:
                raise EvalSetError(f"{path}:{line}: score {row[-1]!r} is not an integer") from error
            if query_id not in texts:
                raise EvalSetError(f"{path}:{line}: query {query_id!r} is not in queries.jsonl")
            if corpus_id not in corpus:
                raise EvalSetError(f"{path}:{line}: corpus id {corpus_id!r} is not in corpus.jsonl")
            if score > 0:
                qrels.setdefault(query_id, []).append((corpus[corpus_id], score))
    return qrels
