"""Ranking metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from seqrec.shared.metrics import ranking_metrics, target_ranks


def test_ranks_count_strictly_higher_scores():
    scores = np.array([[0.1, 0.5, 0.3, 0.5], [1.0, 0.0, 0.0, 0.0]])
    assert target_ranks(scores, np.array([2, 0])).tolist() == [2, 0]
    # ties do not flatter: the target tied with another item still has rank 0 only if nothing is higher
    assert target_ranks(scores, np.array([1, 1])).tolist() == [0, 1]


def test_nan_scores_rank_last():
    scores = np.array([[np.nan, 0.2, 0.1]])
    assert target_ranks(scores, np.array([2])).tolist() == [1]


def test_hand_computed_metrics():
    m = ranking_metrics(np.array([0, 3, 12]))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_empty_ranks():
    assert ranking_metrics(np.array([])) == {}
