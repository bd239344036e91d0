"""The first-order Markov chain the trainer's report and the benchmarks compare against, in one place.

An item scores how often it directly followed the anchor item in the training sequences (and, for a gap, how
often it directly preceded the item after the gap), every neighbour kept; ties are broken by training
popularity, which adds less than one count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqrec.shared.metrics import ranking_metrics, target_ranks
from seqrec.shared.sequence_prior import SequencePrior

BLOCK_CELLS = 20_000_000  # users x items scored at once


class MarkovChain:
    """Transition counts over item-index sequences (indices 1..n_items), both ways."""

    def __init__(self, sequences: Sequence[np.ndarray], n_items: int):
        self.n_items = n_items
        self.counts = SequencePrior.from_sequences(sequences, n_items + 2, 1, max_successors=n_items, reach=1,
                                                   anchors=1)
        popularity = np.bincount(np.concatenate(sequences), minlength=n_items + 1)[1:].astype(np.float64)
        self.tie_break = popularity / (popularity.max() + 1.0)  # below one transition count

    def scores(self, previous: Sequence[int], following: Sequence[int] | None = None) -> np.ndarray:
        """[len(previous), n_items] scores (column j is item j + 1): counts of previous[r] → i, plus counts of
        i → following[r] when given; anchor 0 counts nothing."""
        counts = self.counts
        scores = np.tile(self.tie_break, (len(previous), 1))
        sides = [(previous, counts.indptr, counts.successors, counts.log_counts)]
        if following is not None:
            sides.append((following, counts.pred_indptr, counts.predecessors, counts.pred_log_counts))
        for anchors, indptr, items, log_counts in sides:
            for row, anchor in enumerate(anchors):
                if anchor:
                    lo, hi = indptr[anchor], indptr[anchor + 1]
                    scores[row, items[lo:hi] - 1] += np.rint(np.expm1(log_counts[lo:hi]))
        return scores


def markov_metrics(train: Sequence[np.ndarray], n_items: int, inputs: Sequence[np.ndarray],
                   targets: np.ndarray) -> dict[str, float]:
    """Full-ranking metrics of the chain fitted on `train` (item indices 1..n_items), predicting each target
    from the last item of its input, every item ranked (seen ones too, as the model's `test` metrics)."""
    if not len(inputs):
        return {}
    chain = MarkovChain(train, n_items)
    block = max(1, BLOCK_CELLS // max(n_items, 1))
    ranks = []
    for start in range(0, len(inputs), block):
        rows = inputs[start:start + block]
        scores = chain.scores([int(row[-1]) if len(row) else 0 for row in rows])
        ranks.append(target_ranks(scores, np.asarray(targets[start:start + block], dtype=np.int64) - 1))
    return ranking_metrics(np.concatenate(ranks))
