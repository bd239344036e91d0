"""New arrivals in the hybrid model: simulated item cold start in training, and their exposure after it.

Catalog-only items are new arrivals. To learn how new arrivals are consumed, the hybrid model treats the
most recently introduced warm items — those whose first training interaction is among the latest
`NEWEST_SHARE` of first appearances — as new items too (text and new-item marks, no id), in training
and in the bundle.

A model trained for likelihood ranks an item nobody has consumed yet low: it has no track record, and
each one alone is rarely consumed, although together new arrivals take a steady share of what people
consume. After training, `calibrate_exposure` finds the exposure boost (`shared/scoring.py`) with which the
items nobody has interacted with (catalog-only items, and items added online) take their expected share of
the top-10 slots on the validation histories (what AWS Personalize calls exploration of new items, here
measured from the data rather than set by hand). `expected_unseen_share` estimates that share: each unseen
item is taken to be consumed like one of the newest warm items, whose recent share of interactions is measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqrec.services.trainer.evaluate import score_histories
from seqrec.services.trainer.model import BERT4Rec
from seqrec.shared.scoring import Scorer

NEWEST_SHARE = 0.10  # share of warm items, by first appearance, trained as stand-ins for new ones
UNSEEN_SHARE_CAP = 2.0  # unseen items together get at most this multiple of the newest items' measured share:
# a catalog can hold many items nobody will ever want, and the per-item estimate would hand them every slot


def training_events(train: Sequence[np.ndarray], timestamps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, float64 timestamps) of every training interaction; `timestamps` may run past the
    training prefixes (validation and test items follow them)."""
    items = np.concatenate([seq for seq in train if len(seq)] or [np.zeros(0, np.int64)])
    times = np.concatenate([ts[: len(seq)] for seq, ts in zip(train, timestamps, strict=True) if len(seq)]
                           or [np.zeros(0)])
    return items, times.astype(np.float64)


def first_seen(train: Sequence[np.ndarray], timestamps: Sequence[np.ndarray], n_indices: int) -> np.ndarray:
    """(n_indices,) earliest training timestamp of each item index; +inf for indices never trained on."""
    items, times = training_events(train, timestamps)
    first = np.full(n_indices, np.inf)
    np.minimum.at(first, items, times)
    return first


def newest_items(train: Sequence[np.ndarray], timestamps: Sequence[np.ndarray], n_indices: int,
                 share: float = NEWEST_SHARE) -> np.ndarray:
    """(n_indices,) bool: the `share` of trained items introduced last (ties at the boundary included)."""
    first = first_seen(train, timestamps, n_indices)
    seen = np.isfinite(first)
    n_newest = int(round(share * seen.sum()))
    if n_newest == 0:
        return np.zeros(n_indices, dtype=bool)
    boundary = np.sort(first[seen])[-n_newest]
    return seen & (first >= boundary)


def recent_share(train: Sequence[np.ndarray], timestamps: Sequence[np.ndarray], newest: np.ndarray) -> float:
    """Share of the training interactions since the first newest item appeared that went to newest items:
    how much of current consumption new arrivals take."""
    items, times = training_events(train, timestamps)
    went_to_newest = newest[items]
    if not went_to_newest.any():
        return 0.0
    return float(went_to_newest[times >= times[went_to_newest].min()].mean())  # since the first newest item


def expected_unseen_share(recent: float, n_newest: int, n_unseen: int) -> float:
    """Share of the top-10 slots for `n_unseen` items with no interactions, if each is consumed like one of the
    `n_newest` newest warm items, which together took `recent` of recent interactions (capped, see
    UNSEEN_SHARE_CAP, and below 1)."""
    if n_newest == 0 or n_unseen == 0:
        return 0.0
    return min(recent * n_unseen / n_newest, UNSEEN_SHARE_CAP * recent, 0.99)


def top_k_share(scores: np.ndarray, is_new: np.ndarray, k: int) -> float:
    """Share of the top-k slots (over all rows of `scores` [users, items]) that the items `is_new` take."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.arange(scores.shape[1])
    return float(is_new[top].mean())


def calibrate_exposure(model: BERT4Rec, scorer: Scorer, histories: list[np.ndarray], mask_index: int, target: float,
                       k: int = 10, steps: int = 30) -> float:
    """The exposure boost that gives the items nobody has interacted with `target` of the top-k slots on
    `histories`, scored through `scorer` (the bundle's, prior included). Bisection over [0, 30] nats; 0 when
    they already take their share. Returns the boost; nothing is changed."""
    is_new = scorer.unseen[1:mask_index]
    if not is_new.any() or target <= 0:
        return 0.0
    scores = score_histories(model, histories, mask_index, scorer)
    low, high = 0.0, 30.0
    if top_k_share(scores, is_new, k) >= target:
        return 0.0
    for _ in range(steps):
        middle = (low + high) / 2
        share = top_k_share(scorer.shift_unseen(scores, middle), is_new, k)
        low, high = (middle, high) if share < target else (low, middle)
    return high
