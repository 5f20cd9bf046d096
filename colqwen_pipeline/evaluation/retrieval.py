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
FP16_TIE_PER_TOKEN = 2.0**-10  # see tie_tolerance


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


@dataclass(frozen=True)
class QueryFidelity:
    """One query's search top-k against exact MaxSim over the stored embeddings."""

    query_id: str
    expected: int  # min(k, pages): how many pages a complete answer returns
    identical: int  # returned pages of the exact top-k (ties at the cut broken by page order)
    within: int  # returned pages whose exact score is within the tolerance of the exact k-th best
    misread: int  # returned pages the stored embeddings score differently (or do not hold)
    tolerance: float  # absolute, for this query

    @property
    def recall(self) -> float:
        return self.within / self.expected if self.expected else 1.0

    @property
    def identity_recall(self) -> float:
        return self.identical / self.expected if self.expected else 1.0


@dataclass
class FidelityReport:
    k: int
    per_query: list[QueryFidelity] = field(default_factory=list)
    pages: int = 0
    not_indexed: int = 0  # pages of the exact top-k whose document the index does not hold
    tolerance_per_token: float = FP16_TIE_PER_TOKEN  # the index's score precision (tie_tolerance)

    @property
    def recall(self) -> float:
        """Mean share of the exact top-k answered by a page scoring within the tolerance of it."""
        return fmean(q.recall for q in self.per_query) if self.per_query else 1.0

    @property
    def identity_recall(self) -> float:
        """Mean share of the exact top-k returned page for page."""
        return fmean(q.identity_recall for q in self.per_query) if self.per_query else 1.0

    @property
    def misread(self) -> int:
        return sum(q.misread for q in self.per_query)


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


def tie_tolerance(query_tokens: int, per_token: float = FP16_TIE_PER_TOKEN) -> float:
    """Scores closer than this are ties: fp16 storage of the query and page vectors moves each
    token's best similarity by up to ~2 x 2^-11 (unit vectors), so the stored vectors cannot order
    two pages closer than that per query token (the model's own output could order them either way).
    An index that stores tokens more coarsely (``DocumentIndex.score_error_per_token``) passes its own."""
    return query_tokens * per_token


def judge_query(query_id: str, hits: Sequence[Hit], exact: dict[str, float], k: int, tolerance: float) -> QueryFidelity:
    """How the search's top-k (``hits``) compares with the exact scores of every stored page."""
    expected = min(k, len(exact))
    ranked = sorted(exact, key=lambda page: (-exact[page], page))
    cut = exact[ranked[expected - 1]] if expected else 0.0
    top = set(ranked[:expected])
    returned = {page_id(h.doc_id, h.page): h.score for h in hits[:k]}
    within = sum(1 for page in returned if exact.get(page, -np.inf) >= cut - tolerance)
    misread = sum(1 for page, score in returned.items() if abs(exact.get(page, np.inf) - score) > tolerance)
    return QueryFidelity(query_id, expected, len(top & returned.keys()), min(within, expected), misread, tolerance)


def index_fidelity(
    queries: Sequence[EvalQuery],
    index: DocumentIndex,
    embed_queries: EmbedQueries,
    artifacts: dict[str, EmbeddingArtifact],
    k: int,
) -> FidelityReport:
    """The collection's search top-k against exact MaxSim over the embeddings artifacts, with ties
    (``tie_tolerance``) not counted as misses."""
    pages = sum(len(a.pages) for a in artifacts.values())
    per_token = max(FP16_TIE_PER_TOKEN, index.score_error_per_token)
    if not queries or not artifacts:
        return FidelityReport(k, [], pages, tolerance_per_token=per_token)
    vectors = embed_queries([q.query for q in queries])
    rankings = index.search(vectors, top_k=k)
    exact = exact_scores(vectors, artifacts)
    per_query = [
        judge_query(query.query_id, hits, scores, k, tie_tolerance(len(vector), per_token))
        for query, vector, hits, scores in zip(queries, vectors, rankings, exact, strict=True)
    ]
    held = index.document_ids()
    expected_pages = {page for scores in exact for page in sorted(scores, key=lambda p: scores[p], reverse=True)[:k]}
    not_indexed = sum(1 for page in expected_pages if page.rsplit("#", 1)[0] not in held)
    return FidelityReport(k, per_query, pages, not_indexed, per_token)
