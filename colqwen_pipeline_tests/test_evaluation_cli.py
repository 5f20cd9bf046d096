"""`colqwen-pipeline evaluate`: metric table and top pages per query, as text or JSON."""

from __future__ import annotations

import json

import dagster as dg

from colqwen_pipeline.cli import main
from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline_tests.conftest import REPO, add_sample


def test_evaluate_json_scores_the_live_collection(state, monkeypatch, capsys):
    monkeypatch.setenv("COLQWEN_EVAL_SET", str(REPO / "data" / "eval" / "queries.jsonl"))
    add_sample(state, "scanned_invoice.jpg")
    add_sample(state, "quarterly_memo.docx")
    with dg.instance_for_test() as instance:
        ingest(state, instance=instance, echo=lambda _: None)
    capsys.readouterr()

    assert main(["evaluate", "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]) == {"ndcg_at_5", "recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10"}
    assert [q["query_id"] for q in report["queries"]] == ["q8", "q9", "q10"]  # the others' documents are absent
    assert report["metrics"]["recall_at_5"] == 1.0  # 3 pages in all: every relevant page is in the top 5
    assert report["random_weights"] is True and report["pages"] == 3
    invoice = report["queries"][0]
    assert len(invoice["top"]) == 3
    assert [t["relevant"] for t in invoice["top"]].count(True) == 1
    assert {"document": "scanned_invoice.jpg", "page": 1} in invoice["relevant"]

    assert main(["evaluate", "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "nDCG@5" in text and "RANDOM-WEIGHT TEST MODEL" in text
    assert "q10: table of planned Q3 new hires" in text


def test_evaluate_with_a_missing_eval_set_fails_with_one_line(state, tmp_path, capsys):
    assert main(["evaluate", "--eval-set", str(tmp_path / "none.jsonl")]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "none.jsonl: evaluation set not found" in error
    assert len(error.splitlines()) == 1
