"""Evaluation sets: the shipped JSONL, a BEIR/ViDoRe directory, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pypdfium2
import pytest

from colqwen_pipeline.evaluation.evalset import EvalSetError, load_eval_set
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import REPO, SAMPLES


def page_count(path: Path) -> int:
    if path.suffix == ".pdf":
        return len(pypdfium2.PdfDocument(path))
    return {".docx": 2}.get(path.suffix, 1)  # the memo has an explicit page break (data/README.md)


def test_shipped_eval_set_points_at_real_pages_of_the_samples():
    queries = load_eval_set(REPO / "data" / "eval" / "queries.jsonl")

    assert len(queries) == 10
    assert len({q.query_id for q in queries}) == 10
    for query in queries:
        for page in query.relevant:
            assert (SAMPLES / page.document).is_file(), page.document
            assert 1 <= page.page <= page_count(SAMPLES / page.document), (query.query_id, page)
    first = queries[0].relevant[0]
    assert first.page_id == f"{document_key('acme_annual_report_2025.pdf')}#1"


def write_beir(directory: Path, qrels: str, qrels_name: str = "qrels/test.tsv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = [{"_id": "c1", "document": "a.pdf", "page": 2}, {"_id": "c2", "document": "img.png"}]
    (directory / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus) + "\n")
    queries = [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second query"}]
    (directory / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (directory / qrels_name).parent.mkdir(parents=True, exist_ok=True)
    (directory / qrels_name).write_text(qrels)
    return directory


def test_beir_layout_maps_corpus_ids_to_document_pages_with_grades(tmp_path):
    directory = write_beir(tmp_path / "beir", "query-id\tcorpus-id\tscore\nq1\tc1\t2\nq1\tc2\t0\nq2\tc2\t1\n")

    queries = {q.query_id: q for q in load_eval_set(directory)}

    assert queries["q1"].query == "first query"
    assert queries["q1"].relevance == {f"{document_key('a.pdf')}#2": 2}  # score 0 is not relevant
    assert queries["q2"].relevance == {f"{document_key('img.png')}#1": 1}  # page defaults to 1


def test_beir_layout_accepts_trec_four_column_qrels(tmp_path):
    directory = write_beir(tmp_path / "beir", "q2 0 c1 1\n".replace(" ", "\t"), "qrels.tsv")

    (query,) = load_eval_set(directory)

    assert (query.query_id, [p.page for p in query.relevant]) == ("q2", [2])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query_id": "q1", "query": "x"}', "queries.jsonl:2: missing 'relevant'"),
        ('{"query_id": "q1", "query": "x", "relevant": []}', "queries.jsonl:2: 'relevant' must be a non-empty"),
        ('{"query_id": "q1", "query": "x", "relevant": [{"document": "a.pdf", "page": 0}]}', "not a 1-based page"),
        ('{"query_id": "q0", "query": "x", "relevant": [{"document": "a.pdf"}]}', "query id 'q0' appears twice"),
        ("not json", "queries.jsonl:2: not JSON"),
    ],
)
def test_bad_jsonl_names_the_line_and_the_cause(tmp_path, line, message):
    good = '{"query_id": "q0", "query": "x", "relevant": [{"document": "a.pdf", "page": 1}]}'
    path = tmp_path / "queries.jsonl"
    path.write_text(f"{good}\n{line}\n")

    with pytest.raises(EvalSetError, match=message):
        load_eval_set(path)


def test_unknown_corpus_id_in_qrels_is_refused(tmp_path):
    directory = write_beir(tmp_path / "beir", "q1\tc9\t1\n")

    with pytest.raises(EvalSetError, match=r"qrels/test.tsv:1: corpus id 'c9' is not in corpus.jsonl"):
        load_eval_set(directory)


def test_missing_eval_set_says_which_setting_to_change(tmp_path):
    with pytest.raises(EvalSetError, match="not found.*COLQWEN_EVAL_SET"):
        load_eval_set(tmp_path / "nope.jsonl")
