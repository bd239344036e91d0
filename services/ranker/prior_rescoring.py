"""The bundle's sequence prior at serving: vector-search hits merged with the items only the prior lifts.

A vector search ranks by `intent · item_vector`; the prior adds terms to a few items (the successors of the
last history item, and the seen items). The exact top-k of the sum is among:
- the search's top-k over the items it may return, plus one more hit for every seen item a negative repeat
  bias may push down (`overfetch`), and
- the items the prior touches that pass the filters and exclusions, scored here from the bundle's vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from seqrec.shared.history import history_window
from seqrec.shared.sequence_prior import SequencePrior

Hit = tuple[int, float, str, dict[str, Any]]  # primary key (bundle index), score, item id, display record


def overfetch(prior: SequencePrior | None, history: Sequence[int], exclude: Collection[int]) -> int:
    """Extra search hits needed so that seen items pushed down by the repeat bias cannot crowd out the top-k."""
    if prior is None or prior.repeat_bias >= 0:
        return 0
    return len(set(history_window(history, prior.window)) - set(exclude))


def rescore(prior: SequencePrior | None, history: Sequence[int], intent: np.ndarray, hits: Sequence[Hit], top_k: int,
            item_vectors: np.ndarray, exclude: Collection[int], allowed: Callable[[np.ndarray], np.ndarray],
            describe: Callable[[int], Hit]) -> list[Hit]:
    """The top-k of search `hits` (fetched with `overfetch`) once the prior's terms for `history` are added.

    `allowed(indices)` says which bundle items pass the query's filters; `describe(index)` gives a hit record
    (score ignored) for an item the search did not return.
    """
    if prior is None or not prior.active or not history:
        return list(hits[:top_k])
    indices, bonus = prior.terms(history)
    n_items = len(item_vectors) - 2  # padding and [MASK] are never recommended
    keep = (indices >= 1) & (indices <= n_items)
    keep[keep] &= ~np.isin(indices[keep], np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
    if keep.any():
        keep[keep] &= allowed(indices[keep])
    indices, bonus = indices[keep], bonus[keep]
    added = dict(zip(indices.tolist(), bonus.tolist(), strict=True))
    merged = {hit[0]: (hit[0], hit[1] + added.get(hit[0], 0.0), hit[2], hit[3]) for hit in hits}
    missing = [i for i in indices.tolist() if i not in merged]
    if missing:
        base = item_vectors[missing] @ np.asarray(intent, dtype=np.float32).reshape(-1)
        for index, score in zip(missing, base.tolist(), strict=True):
            pk, _, item_id, display = describe(index)
            merged[index] = (pk, score + added[index], item_id, display)
    return sorted(merged.values(), key=lambda hit: (-hit[1], hit[0]))[:top_k]
