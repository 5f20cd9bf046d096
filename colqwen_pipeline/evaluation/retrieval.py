"""Score the evaluation queries on the live collection, and compare the collection's top-k with
exact brute-force MaxSim over the stored embeddings artifacts (the index's fidelity)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import numpy as np

from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.evaluation.evalset import EvalQuery, page_id
from colqwen_pipeline.evaluation.metrics import DEPTH, chance_scores, mean_scores, score_ranking
from colqwen_pipeline.index.base import DocumentIndex, Hit
from colqwen_pipeline.index.maxsim import maxsim

EmbedQueries = Callable[[list[str]], list[np.ndarray]]
TIE_TOLERANCE = 1e-4  # relative: MaxSim sums in a different order in Milvus search and here


@dataclass
class QueryResult:
    query: EvalQuery
    hits: list[Hit]  # the collection's ranking, best first (DEPTH deep)
    scores: dict[str, float]

    def is_relevant(self, hit: Hit) -> bool:
        return page_id(hit.doc_id, hit.page) in self.query.relevance


@dataclass
class RetrievalReport:
    metrics: dict[str, float]
    results: list[QueryResult]
    skipped: list[str] = field(default_factory=list)  # query ids with no relevant document indexed
    pages: int = 0  # pages in the collection
    chance: dict[str, float] = field(default_factory=dict)  # a random ranking's expected metrics
    random_weights: bool = False  # the indexed embeddings come from the random-weight test model


@dataclass
class FidelityReport:
    k: int
    recall: float  # mean over queries of |collection top-k ∩ exact top-k| / k
    per_query: dict[str, float] = field(default_factory=dict)
    pages: int = 0


def load_artifacts(embeddings_dir: Path, doc_ids: Iterable[str]) -> dict[str, EmbeddingArtifact]:
    """The readable artifacts of ``doc_ids`` (a missing or corrupt one shows up in the consistency check)."""
    artifacts = {doc_id: EmbeddingArtifact.read_or_none(embeddings_dir / doc_id) for doc_id in sorted(doc_ids)}
    return {doc_id: artifact for doc_id, artifact in artifacts.items() if artifact is not None}


def evaluate_retrieval(
    queries: Sequence[EvalQuery],
    index: DocumentIndex,
    embed_queries: EmbedQueries,
    artifacts: dict[str, EmbeddingArtifact],
) -> RetrievalReport:
    """nDCG@5, recall@1/5/10 and MRR@10 of the collection's rankings for the queries whose relevant
    documents are (at least partly) indexed; ``artifacts`` are the indexed documents' embeddings."""
    indexed = set(artifacts)
    answerable = [q for q in queries if q.doc_ids & indexed]
    skipped = [q.query_id for q in queries if not q.doc_ids & indexed]
    pages = sum(len(a.pages) for a in artifacts.values())
    random_weights = any(a.random_weights for a in artifacts.values())
    if not answerable:
        return RetrievalReport(mean_scores([]), [], skipped, pages, chance_scores(0, 0), random_weights)
    rankings = index.search(embed_queries([q.query for q in answerable]), top_k=DEPTH)
    results = []
    for query, hits in zip(answerable, rankings, strict=True):
        ranking = [page_id(h.doc_id, h.page) for h in hits]
        results.append(QueryResult(query, hits, score_ranking(ranking, query.relevance)))
    chance = mean_scores([chance_scores(pages, len(q.relevance)) for q in answerable])
    return RetrievalReport(mean_scores([r.scores for r in results]), results, skipped, pages, chance, random_weights)


def exact_scores(queries: Sequence[np.ndarray], artifacts: dict[str, EmbeddingArtifact]) -> list[dict[str, float]]:
    """Brute-force MaxSim of each query against every stored page, keyed by page id. Reads each
    document once for all queries (artifacts are memory-mapped fp16)."""
    scores: list[dict[str, float]] = [{} for _ in queries]
    for doc_id, artifact in artifacts.items():
        pages = [np.asarray(artifact.page_vectors(i), dtype=np.float32) for i in range(len(artifact.pages))]
        for query, table in zip(queries, scores, strict=True):
            for record, score in zip(artifact.pages, maxsim(query, pages), strict=True):
                table[page_id(doc_id, record["page"])] = float(score)
    return scores


def top_k_recall(hits: Sequence[Hit], exact: dict[str, float], k: int) -> float:
    """Share of the exact top-k the collection returned. A hit counts when its exact score reaches
    the k-th best exact score, so pages tied at the cut are interchangeable."""
    k = min(k, len(exact))
    if k == 0:
        return 1.0
    cut = sorted(exact.values(), reverse=True)[k - 1]
    floor = cut - TIE_TOLERANCE * max(1.0, abs(cut))
    found = {page_id(h.doc_id, h.page) for h in hits[:k]}
    return sum(1 for p in found if exact.get(p, -np.inf) >= floor) / k


def index_fidelity(
    queries: Sequence[EvalQuery],
    index: DocumentIndex,
    embed_queries: EmbedQueries,
    artifacts: dict[str, EmbeddingArtifact],
    k: int,
) -> FidelityReport:
    """Recall@k of the collection's search against exact MaxSim over the embeddings artifacts."""
    pages = sum(len(a.pages) for a in artifacts.values())
    if not queries or not artifacts:
        return FidelityReport(k, 1.0, {}, pages)
    vectors = embed_queries([q.query for q in queries])
    rankings = index.search(vectors, top_k=k)
    exact = exact_scores(vectors, artifacts)
    per_query = {
        query.query_id: top_k_recall(hits, scores, k)
        for query, hits, scores in zip(queries, rankings, exact, strict=True)
    }
    return FidelityReport(k, fmean(per_query.values()), per_query, pages)
