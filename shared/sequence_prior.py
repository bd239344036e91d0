"""Count-based sequence prior: two terms added to the encoder's logit that a dot product cannot hold.

    score(i | history) = intent · item_vectors[i]
                         + transition_weight · Σ_{k=1..anchors} (1/k) · log(1 + rule(h_k → i))
                         + repeat_bias · [i is in the history window]

where h_k is the k-th newest history item and `rule(a → i)` the sequential rule of Ludewig et al. (RecSys 2019):
over the training sequences, every time `i` came at most `reach` steps after `a`, 1 / steps. With reach 1 and
one anchor this is the first-order Markov chain of transition counts.

A gap (gap filling: items before and after it) reads the rules from both sides with the same weight: the
newest items before it forwards, the first items after it backwards (`rule(i → a_k)`, a_k the k-th item after
the gap); the window is then the gap's (`gap_window`).

- Sequential rules: what follows what is sparse and high-rank, and the 64-wide encoder compresses it poorly.
  Counting what came within a few steps (not only right after), from the last few items (not only the last),
  is much stronger than the first-order chain wherever the order of nearby items is loose
  (docs/sequence_rules.md).
- Repeat bias: whether people consume again what they already have. Movie ratings never repeat, so a
  model that learns that puts seen items last; a shop where people reorder learns a bias near zero.

Both weights are fitted on the validation split after training (`services/trainer/prior_fit.py`).
`terms` is the one definition of the prior; `shared/scoring.py` adds it to every score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqrec.shared.history import gap_window, history_window
from seqrec.shared.manifest import PriorSpec

MAX_SUCCESSORS = 256  # successors kept per item, the strongest rules first (ties: lower index)
RULE_REACH = 10  # steps within which a later item counts as following an earlier one
RULE_ANCHORS = 10  # newest history items (first items after a gap) whose rules vote
INDPTR, SUCCESSORS, LOG_COUNTS = "prior_indptr.npy", "prior_successors.npy", "prior_log_counts.npy"
PRED_INDPTR, PREDECESSORS, PRED_LOG_COUNTS = ("prior_pred_indptr.npy", "prior_predecessors.npy",
                                              "prior_pred_log_counts.npy")


def _adjacency(previous: np.ndarray, following: np.ndarray, weights: np.ndarray, n_indices: int,
               max_neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, neighbours, log(1 + summed weight)) of the weighted pairs previous → following: the
    `max_neighbours` strongest neighbours of each index (ties: lower index)."""
    codes, position = np.unique(previous * n_indices + following, return_inverse=True)
    # ranked by the stored float32 value, so sums that differ only in their last bits tie (lower index first)
    strength = np.log1p(np.bincount(position.reshape(-1), weights=weights, minlength=len(codes))).astype(np.float32)
    previous, following = codes // n_indices, codes % n_indices
    order = np.lexsort((following, -strength, previous))  # by previous item, strongest first
    previous, following, strength = previous[order], following[order], strength[order]
    starts = np.searchsorted(previous, np.arange(n_indices))
    keep = np.arange(len(previous)) - starts[previous] < max_neighbours
    previous, following, strength = previous[keep], following[keep], strength[keep]
    indptr = np.searchsorted(previous, np.arange(n_indices + 1)).astype(np.int64)
    return indptr, following.astype(np.int64), strength


@dataclass(frozen=True)
class SequencePrior:
    indptr: np.ndarray  # int64 [n_indices + 1]: successors of index p are successors[indptr[p]:indptr[p + 1]]
    successors: np.ndarray  # int64 item indices, most frequent first
    log_counts: np.ndarray  # float32 log(1 + count) of each successor
    pred_indptr: np.ndarray  # the same for predecessors: what came right before index p
    predecessors: np.ndarray
    pred_log_counts: np.ndarray
    window: int  # history items that count as seen: the encoder's window, max_len - 1
    transition_weight: float = 0.0
    repeat_bias: float = 0.0
    reach: int = 1  # pairs up to this many steps apart were counted, each 1 / steps
    anchors: int = 1  # newest history items whose rules vote, the k-th newest weighing 1 / k

    @classmethod
    def from_sequences(cls, sequences: Sequence[np.ndarray], n_indices: int, window: int,
                       max_successors: int = MAX_SUCCESSORS, reach: int = RULE_REACH,
                       anchors: int = RULE_ANCHORS) -> SequencePrior:
        """Sequential rules over the pairs of `sequences` (item indices) at most `reach` steps apart, both ways;
        weights zero."""
        sequences = [np.asarray(seq, dtype=np.int64) for seq in sequences]
        items = np.concatenate(sequences or [np.zeros(0, np.int64)])
        owner = np.repeat(np.arange(len(sequences)), np.array([len(seq) for seq in sequences], dtype=np.int64))
        previous, following, weights = [], [], []
        for steps in range(1, reach + 1):  # one vectorised pass per distance, pairs within one sequence only
            same = owner[:-steps] == owner[steps:]
            previous.append(items[:-steps][same])
            following.append(items[steps:][same])
            weights.append(np.full(len(previous[-1]), 1.0 / steps))
        pairs = np.concatenate(previous), np.concatenate(following), np.concatenate(weights)
        return cls(*_adjacency(pairs[0], pairs[1], pairs[2], n_indices, max_successors),
                   *_adjacency(pairs[1], pairs[0], pairs[2], n_indices, max_successors), window,
                   reach=reach, anchors=anchors)

    def weighted(self, transition_weight: float, repeat_bias: float) -> SequencePrior:
        return dataclasses.replace(self, transition_weight=float(transition_weight), repeat_bias=float(repeat_bias))

    @property
    def active(self) -> bool:
        return self.transition_weight != 0.0 or self.repeat_bias != 0.0

    def context(self, history: Sequence[int], following: Sequence[int] | None = None
                ) -> tuple[Sequence[int], Sequence[int]]:
        """(items before, items after) that count as seen: the history's window, or the gap's (`gap_window`)."""
        if following is None:
            return history_window(history, self.window), ()
        return gap_window(history, following, self.window)

    def components(self, history: Sequence[int], following: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, rule evidence, seen) of every item the prior touches for `history` (item indices, oldest
        first): the successors of its newest `anchors` items (the k-th newest's log counts weighed 1 / k) and
        the items of its window, each index once. With `following` (a gap between `history` and `following`)
        also the predecessors of the first `anchors` items after the gap, and the window is the gap's."""
        before, after = self.context(history, following)
        seen_items = np.asarray([*before, *after], dtype=np.int64)
        if len(seen_items) == 0:
            empty = np.zeros(0, np.int64)
            return empty, np.zeros(0, np.float32), np.zeros(0, np.float32)
        newest_first = list(before[::-1][:self.anchors])
        linked = [self._neighbours(self.indptr, self.successors, self.log_counts, anchor, k)
                  for k, anchor in enumerate(newest_first, start=1)]
        linked += [self._neighbours(self.pred_indptr, self.predecessors, self.pred_log_counts, anchor, k)
                   for k, anchor in enumerate(after[:self.anchors], start=1)]
        n_linked = sum(len(items) for items, _ in linked)
        indices, position = np.unique(np.concatenate([*(items for items, _ in linked), seen_items]),
                                      return_inverse=True)
        evidence = np.concatenate([counts for _, counts in linked] or [np.zeros(0, np.float32)])
        log_counts = np.bincount(position[:n_linked], weights=evidence, minlength=len(indices)).astype(np.float32)
        seen = np.zeros(len(indices), np.float32)
        seen[position[n_linked:]] = 1.0
        return indices, log_counts, seen

    @staticmethod
    def _neighbours(indptr: np.ndarray, items: np.ndarray, log_counts: np.ndarray, index: int,
                    rank: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(neighbours, log counts / rank) of `index`, the rank-th anchor; none for padding (0) or an index the
        counts do not cover."""
        if not 0 < index < len(indptr) - 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return items[indptr[index]:indptr[index + 1]], log_counts[indptr[index]:indptr[index + 1]] / np.float32(rank)

    def terms(self, history: Sequence[int], following: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, score added to each) for `history` (or the gap before `following`); every other item gets
        nothing."""
        indices, log_counts, seen = self.components(history, following)
        return indices, self.combine(log_counts, seen, self.transition_weight, self.repeat_bias)

    @staticmethod
    def combine(log_counts: np.ndarray, seen: np.ndarray, transition_weight: float, repeat_bias: float) -> np.ndarray:
        """The prior's term from its `components` at the given weights (the fit scores a grid of them)."""
        return transition_weight * log_counts + repeat_bias * seen

    # ---- bundle files -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {INDPTR: self.indptr, SUCCESSORS: self.successors, LOG_COUNTS: self.log_counts,
                PRED_INDPTR: self.pred_indptr, PREDECESSORS: self.predecessors, PRED_LOG_COUNTS: self.pred_log_counts}

    def spec(self) -> PriorSpec:
        return PriorSpec(self.transition_weight, self.repeat_bias, self.window, MAX_SUCCESSORS, self.reach,
                         self.anchors)

    @classmethod
    def from_bundle(cls, bundle: Any) -> SequencePrior | None:
        """The bundle's prior (None when it has none)."""
        spec = bundle.manifest.scoring.prior
        if spec is None:
            return None
        indptr = bundle.array(INDPTR)
        if bundle.has(PRED_INDPTR):
            backward = bundle.array(PRED_INDPTR), bundle.array(PREDECESSORS), bundle.array(PRED_LOG_COUNTS)
        else:  # written before gap filling: such a bundle only answers after the last item
            backward = np.zeros_like(indptr), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(indptr, bundle.array(SUCCESSORS), bundle.array(LOG_COUNTS), *backward, spec.window,
                   spec.transition_weight, spec.repeat_bias, spec.reach, spec.anchors)
