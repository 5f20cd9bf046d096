"""Ranking metrics, with trec_eval's definitions (tests pin them against pytrec_eval).

A ranking is a list of page ids, best first; relevance maps page id -> grade (> 0 is relevant).
nDCG uses linear gains (the grade) and the log2(rank + 1) discount; recall@k is the share of the
relevant pages found in the top k; MRR@k is 1/rank of the first relevant page within the top k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean

METRICS = ("ndcg_at_5", "recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10")
DEPTH = 10  # the deepest cut any metric looks at


def _relevant(relevance: Mapping[str, int]) -> dict[str, int]:
    return {page: grade for page, grade in relevance.items() if grade > 0}


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = _relevant(relevance)
    if not relevant:
        return 0.0
    dcg = sum(relevant.get(page, 0) / math.log2(rank + 2) for rank, page in enumerate(ranking[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / idcg


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = _relevant(relevance)
    if not relevant:
        return 0.0
    return len(relevant.keys() & set(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = _relevant(relevance)
    for rank, page in enumerate(ranking[:k], 1):
        if page in relevant:
            return 1.0 / rank
    return 0.0


def score_ranking(ranking: Sequence[str], relevance: Mapping[str, int]) -> dict[str, float]:
    """Every metric of ``METRICS`` for one query."""
    return {
        "ndcg_at_5": ndcg_at_k(ranking, relevance, 5),
        "recall_at_1": recall_at_k(ranking, relevance, 1),
        "recall_at_5": recall_at_k(ranking, relevance, 5),
        "recall_at_10": recall_at_k(ranking, relevance, 10),
        "mrr_at_10": mrr_at_k(ranking, relevance, 10),
    }


def mean_scores(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Macro average over queries (each query weighs the same, as in BEIR and ViDoRe)."""
    return {name: fmean(q[name] for q in per_query) if per_query else 0.0 for name in METRICS}


def chance_scores(pages: int, relevant: int) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of ``pages`` pages with ``relevant`` of
    them relevant (binary grades): what a random-weight model should score."""
    if pages <= 0 or relevant <= 0:
        return dict.fromkeys(METRICS, 0.0)
    relevant = min(relevant, pages)
    p_relevant_at_rank = relevant / pages  # the same at every rank
    ideal = sum(1 / math.log2(r + 2) for r in range(min(relevant, 5)))
    dcg = sum(p_relevant_at_rank / math.log2(r + 2) for r in range(min(5, pages)))

    def recall(k: int) -> float:
        return min(k, pages) / pages

    def p_first_relevant_at(rank: int) -> float:  # hypergeometric: ranks 1..rank-1 all irrelevant
        return math.comb(pages - rank, relevant - 1) / math.comb(pages, relevant)

    mrr = sum(p_first_relevant_at(r) / r for r in range(1, min(DEPTH, pages) + 1))
    return {
        "ndcg_at_5": dcg / ideal,
        "recall_at_1": recall(1),
        "recall_at_5": recall(5),
        "recall_at_10": recall(10),
        "mrr_at_10": mrr,
    }
