"""Ranking metrics: hand-computed values, pytrec_eval (trec_eval's reference code) and exact chance levels."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from colqwen_pipeline.evaluation.metrics import (
    METRICS,
    chance_scores,
    mean_scores,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    score_ranking,
)

RANKING = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]


def test_single_relevant_page_at_rank_three():
    relevance = {"c": 1}

    assert ndcg_at_k(RANKING, relevance, 5) == pytest.approx(1 / math.log2(4))  # 0.5
    assert recall_at_k(RANKING, relevance, 1) == 0.0
    assert recall_at_k(RANKING, relevance, 5) == 1.0
    assert mrr_at_k(RANKING, relevance, 10) == pytest.approx(1 / 3)


def test_graded_relevance_uses_linear_gains_and_the_ideal_order():
    relevance = {"b": 2, "e": 1, "z": 1}  # "z" is never retrieved

    dcg = 2 / math.log2(3) + 1 / math.log2(6)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKING, relevance, 5) == pytest.approx(dcg / ideal)  # 0.5397
    assert recall_at_k(RANKING, relevance, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKING, relevance, 1) == 0.0
    assert mrr_at_k(RANKING, relevance, 10) == pytest.approx(1 / 2)


def test_relevant_page_below_the_cut_scores_zero():
    relevance = {"k": 1}  # rank 11

    assert score_ranking(RANKING, relevance) == dict.fromkeys(METRICS, 0.0)


def test_perfect_ranking_scores_one():
    assert score_ranking(RANKING, {"a": 1}) == dict.fromkeys(METRICS, 1.0)


def test_mean_is_a_macro_average_over_queries():
    assert mean_scores([score_ranking(RANKING, {"a": 1}), score_ranking(RANKING, {"z": 1})])["mrr_at_10"] == 0.5


def test_metrics_match_pytrec_eval_on_random_graded_runs():
    import pytrec_eval  # dev dependency pytrec-eval-terrier: trec_eval's C code

    rng = random.Random(7)
    pages = [f"p{i}" for i in range(40)]
    qrels, run, ours = {}, {}, {}
    for q in range(60):
        ranking = rng.sample(pages, 25)
        relevance = {p: rng.choice([1, 1, 2, 3]) for p in rng.sample(pages, rng.randint(1, 4))}
        qrels[f"q{q}"] = relevance
        # distinct, decreasing scores: trec_eval breaks ties by document id, so avoid any tie
        run[f"q{q}"] = {p: float(len(ranking) - r) for r, p in enumerate(ranking[:10])}
        ours[f"q{q}"] = score_ranking(ranking, relevance)
    measures = {"ndcg_cut.5", "recall.1,5,10", "recip_rank"}
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)

    for query, scores in ours.items():
        expected = reference[query]
        assert scores["ndcg_at_5"] == pytest.approx(expected["ndcg_cut_5"], abs=1e-4)
        assert scores["recall_at_1"] == pytest.approx(expected["recall_1"], abs=1e-4)
        assert scores["recall_at_5"] == pytest.approx(expected["recall_5"], abs=1e-4)
        assert scores["recall_at_10"] == pytest.approx(expected["recall_10"], abs=1e-4)
        assert scores["mrr_at_10"] == pytest.approx(expected["recip_rank"], abs=1e-4)  # run holds 10 pages only


@pytest.mark.parametrize(("pages", "relevant"), [(6, 1), (6, 2), (7, 3), (12, 1)])
def test_chance_scores_equal_the_mean_over_every_ranking(pages, relevant):
    names = [f"p{i}" for i in range(pages)]
    relevance = dict.fromkeys(names[:relevant], 1)
    if math.factorial(pages) > 50_000:  # too many permutations: a large sample of shuffles
        rng = random.Random(3)
        rankings = [rng.sample(names, pages) for _ in range(20_000)]
        tolerance = 0.01
    else:
        rankings = [list(p) for p in itertools.permutations(names)]
        tolerance = 1e-9

    observed = mean_scores([score_ranking(r, relevance) for r in rankings])

    for name, value in chance_scores(pages, relevant).items():
        assert observed[name] == pytest.approx(value, abs=tolerance), name
