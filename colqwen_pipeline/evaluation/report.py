"""What ``colqwen-pipeline evaluate`` prints: the metric table and the top pages of each query."""

from __future__ import annotations

from typing import Any

from colqwen_pipeline.evaluation.metrics import METRICS
from colqwen_pipeline.evaluation.retrieval import QueryResult, RetrievalReport

LABELS = {
    "ndcg_at_5": "nDCG@5",
    "recall_at_1": "recall@1",
    "recall_at_5": "recall@5",
    "recall_at_10": "recall@10",
    "mrr_at_10": "MRR@10",
}


def report_json(report: RetrievalReport, top: int = 5) -> dict[str, Any]:
    return {
        "metrics": {name: round(report.metrics[name], 4) for name in METRICS},
        "queries": [_query_json(result, top) for result in report.results],
        "chance": {name: round(value, 4) for name, value in report.chance.items()},
        "skipped": report.skipped,
        "pages": report.pages,
        "random_weights": report.random_weights,
    }


def _query_json(result: QueryResult, top: int) -> dict[str, Any]:
    return {
        "query_id": result.query.query_id,
        "query": result.query.query,
        "relevant": [{"document": r.document, "page": r.page} for r in result.query.relevant],
        **{name: round(result.scores[name], 4) for name in METRICS},
        "top": [
            {"document": h.document, "page": h.page, "score": round(h.score, 4), "relevant": result.is_relevant(h)}
            for h in result.hits[:top]
        ],
    }


def report_text(report: RetrievalReport, top: int = 5) -> str:
    lines = [f"{len(report.results)} queries over {report.pages} pages"]
    if report.skipped:
        lines.append(f"skipped (no relevant document indexed): {', '.join(report.skipped)}")
    lines += ["", f"{'metric':<10} {'score':>7} {'chance':>7}"]
    lines += [f"{LABELS[n]:<10} {report.metrics[n]:7.3f} {report.chance.get(n, 0.0):7.3f}" for n in METRICS]
    if report.random_weights:
        lines.append("RANDOM-WEIGHT TEST MODEL: scores near chance are expected; set COLQWEN_MODEL for real ones")
    for result in report.results:
        lines += ["", f"{result.query.query_id}: {result.query.query}  (nDCG@5 {result.scores['ndcg_at_5']:.3f})"]
        relevant = ", ".join(f"{r.document} p{r.page}" for r in result.query.relevant)
        lines.append(f"     relevant: {relevant}")
        for rank, hit in enumerate(result.hits[:top], 1):
            mark = "*" if result.is_relevant(hit) else " "
            lines.append(f"  {mark}{rank:>2}. {hit.score:8.3f}  {hit.document} page {hit.page}")
    return "\n".join(lines)
