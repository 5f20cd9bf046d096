"""The logic of the asset checks, free of Dagster: each returns a ``CheckOutcome`` that
``defs/checks.py`` turns into an ``AssetCheckResult``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.evaluation.retrieval import FidelityReport, RetrievalReport

CHUNK_ROWS = 65536  # token vectors checked at a time: bounded memory for long documents


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> rows


# -- embedding_dimension --------------------------------------------------------------------------
def check_embeddings(directory: Path, expected_dim: int, norm_tolerance: float) -> CheckOutcome:
    """Every page has tokens; vectors are ``expected_dim``-d, finite and unit-norm within tolerance."""
    if not (directory / "pages.json").is_file():
        return CheckOutcome(False, f"no embeddings artifact at {directory}")
    artifact = EmbeddingArtifact.read_or_none(directory)
    if artifact is None:
        return CheckOutcome(False, f"unreadable embeddings artifact at {directory} (re-ingest rebuilds it)")
    counts = [p["count"] for p in artifact.pages]
    vectors = artifact.vectors
    problems = []
    if not counts:
        problems.append("the document has no pages")
    if empty := [p["page"] for p in artifact.pages if p["count"] < 1]:
        problems.append(f"pages without tokens: {empty[:10]}")
    if artifact.dim != expected_dim or vectors.shape[1:] != (expected_dim,):
        problems.append(f"dimension {vectors.shape[1:]} (declared {artifact.dim}), expected {expected_dim}")
    nonfinite, worst = _scan_vectors(vectors) if vectors.ndim == 2 else (0, 0.0)
    if nonfinite:
        problems.append(f"{nonfinite} token vectors hold NaN or infinity")
    if worst > norm_tolerance:
        problems.append(f"a token vector's norm is off 1 by {worst:.4f} (tolerance {norm_tolerance})")
    metadata = {
        "pages": len(counts),
        "tokens": int(sum(counts)),
        "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        "tokens_per_page_min": min(counts, default=0),
        "tokens_per_page_mean": round(fmean(counts), 1) if counts else 0.0,
        "tokens_per_page_max": max(counts, default=0),
        "nonfinite_vectors": nonfinite,
        "max_norm_error": round(worst, 5),
    }
    if problems:
        return CheckOutcome(False, "; ".join(problems), metadata)
    return CheckOutcome(True, f"{len(counts)} pages, {sum(counts)} unit-norm {expected_dim}-d token vectors", metadata)


def _scan_vectors(vectors: np.ndarray) -> tuple[int, float]:
    """(vectors with a non-finite value, largest |norm - 1| among the finite ones)."""
    nonfinite, worst = 0, 0.0
    for start in range(0, len(vectors), CHUNK_ROWS):
        chunk = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)
        finite = np.isfinite(chunk).all(axis=1)
        nonfinite += int((~finite).sum())
        if finite.any():
            worst = max(worst, float(np.abs(np.linalg.norm(chunk[finite], axis=1) - 1.0).max()))
    return nonfinite, worst


# -- throughput -----------------------------------------------------------------------------------
def check_throughput(metrics: Mapping[str, Any], floors: Mapping[str, float]) -> CheckOutcome:
    """Forward-only pages/s of the run that embedded this document against the floor of its device
    type (cpu, cuda, ...). End-to-end pages/s and the model load time are reported beside it, named
    as such: they include rendering, the cache, Milvus and start-up, which say nothing of the model.

    Pages served from the cache are left out: they say nothing about the model's speed."""
    device = str(metrics.get("device", "cpu"))
    device_type = device.split(":")[0]
    floor = floors.get(device_type, floors["cpu"])
    forwarded = int(metrics.get("pages_forwarded", 0))
    seconds = float(metrics.get("forward_seconds", 0.0))
    metadata = {
        "device": device,
        "device_type": device_type,
        "served_by": str(metrics.get("served_by", "this process")),
        "batch_size": int(metrics.get("batch_size", 0)),
        "batch_size_used": int(metrics.get("batch_size_used", 0)),
        "pages_forwarded": forwarded,
        "forward_seconds": round(seconds, 3),
        "end_to_end_pages_per_s": float(metrics.get("end_to_end_pages_per_s", 0.0)),
        "model_load_s": float(metrics.get("model_load_s", 0.0)),
        "floor_pages_per_s": floor,
    }
    if forwarded == 0 or seconds <= 0:
        return CheckOutcome(True, "every page came from the cache: no model throughput to judge", metadata)
    pages_per_s = forwarded / seconds
    metadata |= {"forward_pages_per_s": round(pages_per_s, 3), "seconds_per_page": round(seconds / forwarded, 4)}
    verdict = "at or above" if pages_per_s >= floor else "BELOW"
    description = (
        f"{pages_per_s:.2f} pages/s forward-only on {device}: {verdict} the {device_type} floor of {floor} pages/s"
    )
    return CheckOutcome(pages_per_s >= floor, description, metadata)


# -- collection_consistency -----------------------------------------------------------------------
def check_consistency(
    artifact_tokens: Mapping[str, int], index_rows: Mapping[str, int], inbox_doc_ids: set[str]
) -> CheckOutcome:
    """Token vectors per document in Milvus equal the tokens of its embeddings artifact; none for a
    document gone from the inbox. ``artifact_tokens`` covers the inbox documents that have one."""
    table = []
    for doc_id in sorted(set(artifact_tokens) | {d for d, n in index_rows.items() if n}):
        expected = artifact_tokens.get(doc_id, 0) if doc_id in inbox_doc_ids else 0
        rows = index_rows.get(doc_id, 0)
        if doc_id not in inbox_doc_ids:
            state = "orphan rows (not in the inbox)"
        elif doc_id not in artifact_tokens:
            state = "rows without an embeddings artifact"
        else:
            state = "ok" if rows == expected else "row count differs from the artifact"
        table.append({"doc_id": doc_id, "tokens": expected, "rows": rows, "state": state})
    bad = [row for row in table if row["state"] != "ok"]
    metadata = {
        "documents": len(table),
        "mismatched": len(bad),
        "rows": int(sum(index_rows.values())),
        "tokens": int(sum(artifact_tokens.values())),
    }
    if bad:
        summary = ", ".join(f"{r['doc_id']}: {r['state']} ({r['rows']} rows, {r['tokens']} tokens)" for r in bad[:5])
        return CheckOutcome(False, f"{len(bad)} inconsistent documents: {summary}", metadata, {"documents": table})
    return CheckOutcome(True, f"{len(table)} documents, rows match their embeddings", metadata, {"documents": table})


# -- retrieval_quality ----------------------------------------------------------------------------
def check_retrieval_quality(report: RetrievalReport, min_ndcg_at_5: float, min_recall_at_5: float) -> CheckOutcome:
    metadata: dict[str, Any] = {name: round(value, 4) for name, value in report.metrics.items()}
    metadata |= {f"chance_{name}": round(value, 4) for name, value in report.chance.items()}
    metadata |= {
        "queries": len(report.results),
        "skipped_queries": len(report.skipped),
        "pages": report.pages,
        "random_weights": report.random_weights,
    }
    if not report.results:
        skipped = f" ({len(report.skipped)} queries' documents not indexed)" if report.skipped else ""
        return CheckOutcome(True, f"nothing to judge: no evaluation query has its document indexed{skipped}", metadata)
    ndcg, recall = report.metrics["ndcg_at_5"], report.metrics["recall_at_5"]
    passed = ndcg >= min_ndcg_at_5 and recall >= min_recall_at_5
    scores = (
        f"nDCG@5 {ndcg:.3f} (min {min_ndcg_at_5}), recall@5 {recall:.3f} (min {min_recall_at_5}) over "
        f"{len(report.results)} queries and {report.pages} pages"
    )
    if report.random_weights:  # the key fact first: the UI shows the first ~80 characters
        chance = report.chance["ndcg_at_5"]
        description = f"RANDOM-WEIGHT TEST MODEL, scores near chance (nDCG@5 {chance:.3f} by luck): {scores}"
    else:
        description = scores if passed else f"below the minimum: {scores}"
    if report.skipped:
        description += f"; {len(report.skipped)} queries skipped (documents not indexed: {report.skipped[:5]})"
    table = [per_query_row(r) for r in report.results]
    return CheckOutcome(passed, description, metadata, {"per_query": table})


def per_query_row(result) -> dict[str, Any]:
    top = result.hits[0] if result.hits else None
    return {
        "query_id": result.query.query_id,
        "query": result.query.query,
        "relevant": ", ".join(f"{r.document} p{r.page}" for r in result.query.relevant),
        "top_hit": f"{top.document} p{top.page}" if top else "",
        **{name: round(value, 4) for name, value in result.scores.items()},
    }


# -- index_fidelity -------------------------------------------------------------------------------
def check_index_fidelity(report: FidelityReport, min_recall: float) -> CheckOutcome:
    """Passes when the search's top-k holds ``min_recall`` of the exact top-k, a page counting when
    its exact score is within the tie tolerance of the exact k-th best. The first words say which
    of four cases it is: exact, tied scores, the index not holding the stored embeddings, or the
    first stage missing pages the index holds."""
    recall, identity = report.recall, report.identity_recall
    metadata = {
        "k": report.k,
        "recall_at_k": round(recall, 4),
        "identity_recall_at_k": round(identity, 4),
        "min_recall": min_recall,
        "tolerance_per_query_token": report.tolerance_per_token,
        "queries": len(report.per_query),
        "pages": report.pages,
        "worst_query_recall": round(min((q.recall for q in report.per_query), default=1.0), 4),
        "misread_pages": report.misread,
        "not_indexed_pages": report.not_indexed,
    }
    table = [
        {"query_id": q.query_id, "recall_at_k": round(q.recall, 4), "identity_recall_at_k": round(q.identity_recall, 4)}
        for q in report.per_query
    ]
    if not report.per_query:
        return CheckOutcome(True, "nothing to compare: no evaluation queries or no indexed pages", metadata)
    passed = recall >= min_recall
    figures = (
        f"recall {recall:.4f} ({'>=' if passed else '<'} {min_recall}) counting pages within "
        f"{report.tolerance_per_token:.6f} per query token (the stored tokens' precision) of the exact "
        f"{report.k}th best, identity "
        f"recall {identity:.4f}, over {len(report.per_query)} queries and {report.pages} stored pages"
    )
    if passed:
        verdict = "search returns the exact top-{k}" if identity == 1.0 else "scores are tied"
    elif report.misread or report.not_indexed:
        verdict = "the index does not hold the stored embeddings"
        figures += (
            f"; {report.misread} returned pages scored otherwise than their stored embeddings, "
            f"{report.not_indexed} expected pages are of documents the index does not hold"
        )
    else:
        verdict = "the first stage misses pages the index holds"
    description = f"{verdict.format(k=report.k)}: {figures}"
    if report.pages <= report.k:
        description += f"; only {report.pages} pages, so any complete top-{report.k} matches (too few pages to test)"
    return CheckOutcome(passed, description, metadata, {"per_query": table})
