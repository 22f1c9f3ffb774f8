"""The metric module against hand-computed cases (ties, no relevant item, k beyond the collection) and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from clip_search.evaluation.metrics import (
    Ranks,
    average_precision,
    chance,
    first_relevant_rank,
    hit_at_k,
    mean,
    mean_average_precision,
    median_rank,
    ndcg_at_k,
    precision_at_k,
    rank_relevant,
    recall_at_k,
    reciprocal_rank,
    summarize,
)


def one(scores, relevant, exclude=None) -> Ranks:
    return rank_relevant(
        np.asarray([scores], dtype=float),
        np.asarray([relevant], dtype=bool),
        None if exclude is None else np.asarray([exclude], dtype=bool),
    )


def test_hand_computed_ranking():
    r = one([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1])
    assert r.ranks.tolist() == [[2.0, 4.0]]
    assert recall_at_k(r, 1)[0] == 0.0
    assert recall_at_k(r, 2)[0] == 0.5
    assert recall_at_k(r, 4)[0] == 1.0
    assert precision_at_k(r, 2)[0] == 0.5
    assert precision_at_k(r, 4)[0] == 0.5
    assert hit_at_k(r, 1)[0] == 0.0 and hit_at_k(r, 2)[0] == 1.0
    assert average_precision(r)[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert reciprocal_rank(r)[0] == 0.5
    assert first_relevant_rank(r)[0] == 2.0
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(r, 4)[0] == pytest.approx(expected)
    assert ndcg_at_k(r, 1)[0] == 0.0


def test_ties_are_broken_against_the_method():
    # a relevant item tied with two non-relevant ones ranks after both of them
    r = one([1.0, 1.0, 1.0, 0.0], [0, 1, 0, 0])
    assert r.ranks.tolist() == [[3.0]]
    assert recall_at_k(r, 2)[0] == 0.0 and recall_at_k(r, 3)[0] == 1.0
    # a constant scorer: every relevant item after every non-relevant one
    r = one([0.3] * 5, [1, 0, 0, 1, 0])
    assert r.ranks.tolist() == [[4.0, 5.0]]
    assert average_precision(r)[0] == pytest.approx((1 / 4 + 2 / 5) / 2)
    # a tie that straddles a better non-relevant item
    r = one([0.5, 0.5, 0.9], [1, 0, 0])
    assert r.ranks.tolist() == [[3.0]]


def test_ties_among_relevant_items_cost_nothing():
    r = one([1.0, 1.0, 0.0], [1, 1, 0])
    assert r.ranks.tolist() == [[1.0, 2.0]]
    assert average_precision(r)[0] == 1.0
    assert precision_at_k(r, 2)[0] == 1.0
    assert ndcg_at_k(r, 10)[0] == pytest.approx(1.0)


def test_query_without_relevant_item_is_undefined_and_left_out():
    r = rank_relevant(np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[False, False], [True, False]]))
    for metric in (recall_at_k(r, 1), precision_at_k(r, 1), hit_at_k(r, 1), ndcg_at_k(r, 1)):
        assert math.isnan(metric[0]) and not math.isnan(metric[1])
    assert math.isnan(average_precision(r)[0]) and math.isnan(reciprocal_rank(r)[0])
    assert mean_average_precision(r) == 0.5  # only the second query counts: its item is at rank 2
    assert median_rank(r) == 2.0
    summary = summarize(r, (1,))
    assert summary["queries"] == 2 and summary["queries_without_relevant"] == 1
    nothing = rank_relevant(np.zeros((2, 3)), np.zeros((2, 3), dtype=bool))
    assert math.isnan(mean(recall_at_k(nothing, 1))) and math.isnan(median_rank(nothing))


def test_k_larger_than_the_collection():
    r = one([0.9, 0.5, 0.1], [0, 1, 0])
    assert recall_at_k(r, 10)[0] == 1.0
    assert precision_at_k(r, 10)[0] == pytest.approx(0.1)  # divided by k, as trec_eval does
    assert hit_at_k(r, 10)[0] == 1.0
    assert ndcg_at_k(r, 10)[0] == pytest.approx(1 / math.log2(3))


def test_excluded_items_are_not_candidates():
    r = one([0.9, 0.8, 0.7], [1, 0, 1], exclude=[1, 0, 0])  # the query itself (item 0) is left out
    assert r.ranks.tolist() == [[2.0]]
    assert r.n_relevant.tolist() == [1] and r.n_candidates.tolist() == [2]


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="finite"):
        one([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="shape"):
        rank_relevant(np.zeros((2, 3)), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(one([0.1, 0.2], [1, 0]), 0)
    # NaN on an excluded item does not matter
    assert one([float("nan"), 0.2], [0, 1], exclude=[1, 0]).ranks.tolist() == [[1.0]]


def test_average_precision_matches_sklearn_on_tie_free_scores():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(40, 60))
    relevant = rng.random((40, 60)) < rng.uniform(0.02, 0.5, size=(40, 1))
    relevant[:, 0] |= ~relevant.any(axis=1)
    r = rank_relevant(scores, relevant)
    ours = average_precision(r)
    theirs = np.array([average_precision_score(relevant[q], scores[q]) for q in range(40)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert mean_average_precision(r) == pytest.approx(theirs.mean())


def test_chunks_concatenate_and_reorder():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(10, 8))
    relevant = rng.random((10, 8)) < 0.3
    whole = rank_relevant(scores, relevant)
    parts = Ranks.concat([rank_relevant(scores[:4], relevant[:4]), rank_relevant(scores[4:], relevant[4:])])
    np.testing.assert_array_equal(whole.ranks, parts.ranks)
    np.testing.assert_array_equal(whole.take([3, 1]).n_relevant, whole.n_relevant[[3, 1]])


def test_chance_matches_a_random_ranking():
    rng = np.random.default_rng(11)
    n_queries, n_items = 6000, 40
    scores = rng.normal(size=(n_queries, n_items))
    relevant = np.zeros((n_queries, n_items), dtype=bool)
    relevant[:, :3] = True  # 3 relevant items each
    r = rank_relevant(scores, relevant)
    expected = chance(r, (1, 5, 10))
    measured = summarize(r, (1, 5, 10))
    for key in ("R@1", "R@5", "R@10", "P@5", "hit@1", "hit@10", "mAP", "MRR"):
        assert measured[key] == pytest.approx(expected[key], abs=0.015), key
    assert expected["R@5"] == pytest.approx(5 / 40)
    assert expected["hit@1"] == pytest.approx(3 / 40)
