"""Ranking metrics from full-catalog scores: HR@K, NDCG@K and MRR.

rank = number of catalog items scored strictly higher than the target (0 is best), the same
rule as the peer benchmark runners, so ties never flatter the model.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (1, 5, 10, 20)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target column among all columns of `scores` [B, n]."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float32), nan=-np.inf)
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, targets][:, None]
    return (scores > target_scores).sum(axis=1)


def exclude_seen(scores: np.ndarray, histories: list[np.ndarray] | list[list[int]], target_cols: np.ndarray) -> None:
    """In place: each row's history items (item indices; column = index - 1) score -inf, except the row's
    target column, which is never excluded: the seen-excluded ranking that serving does."""
    rows = np.arange(len(target_cols))
    target_scores = scores[rows, target_cols].copy()
    for row, history in enumerate(histories):
        scores[row, np.asarray(history, dtype=np.int64) - 1] = -np.inf
    scores[rows, target_cols] = target_scores


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k (one relevant item): 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ranking_metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """HR@K, NDCG@K for every cutoff and MRR, averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {}
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_gains(ranks, k).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out
