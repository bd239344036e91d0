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


def test_markov_baseline_metrics_match_brute_force_counts():
    """The report's Markov chain: an item scores how often it followed the input's last item in training, ties
    broken by training popularity; every item is ranked."""
    from seqrec.shared.markov import markov_metrics

    rng = np.random.default_rng(5)
    n_items = 30
    train = [rng.integers(1, n_items + 1, size=int(rng.integers(2, 12))) for _ in range(200)]
    inputs = [rng.integers(1, n_items + 1, size=int(rng.integers(1, 6))) for _ in range(120)]
    targets = rng.integers(1, n_items + 1, size=len(inputs))
    follows = np.zeros((n_items + 1, n_items + 1))
    for seq in train:
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            follows[a, b] += 1
    popularity = np.bincount(np.concatenate(train), minlength=n_items + 1)[1:].astype(float)
    ranks = []
    for row, target in zip(inputs, targets, strict=True):
        scores = follows[row[-1], 1:] + popularity / (popularity.max() + 1.0)
        ranks.append(int((scores > scores[target - 1]).sum()))
    want = ranking_metrics(np.array(ranks))
    got = markov_metrics(train, n_items, inputs, targets)
    assert got == pytest.approx(want)
