"""Count-based sequence prior: two terms added to the encoder's logit that a dot product cannot hold.

    score(i | history) = intent · item_vectors[i]
                         + transition_weight · log(1 + count(last history item → i))
                         + repeat_bias · [i is in the history window]

- Transition counts: how often `i` directly followed the last history item in the training sequences.
  What follows what is sparse and high-rank; a first-order Markov chain on raw counts beat the encoder
  alone on both benchmark datasets, and the sum beats both (docs/training_benchmark.md).
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

from seqrec.shared.history import history_window
from seqrec.shared.manifest import PriorSpec

MAX_SUCCESSORS = 256  # successors kept per item, the most frequent first (ties: lower index)
INDPTR, SUCCESSORS, LOG_COUNTS = "prior_indptr.npy", "prior_successors.npy", "prior_log_counts.npy"


@dataclass(frozen=True)
class SequencePrior:
    indptr: np.ndarray  # int64 [n_indices + 1]: successors of index p are successors[indptr[p]:indptr[p + 1]]
    successors: np.ndarray  # int64 item indices, most frequent first
    log_counts: np.ndarray  # float32 log(1 + count) of each successor
    window: int  # history items that count as seen: the encoder's window, max_len - 1
    transition_weight: float = 0.0
    repeat_bias: float = 0.0

    @classmethod
    def from_sequences(cls, sequences: Sequence[np.ndarray], n_indices: int, window: int,
                       max_successors: int = MAX_SUCCESSORS) -> SequencePrior:
        """Transition counts over consecutive pairs of `sequences` (item indices), weights zero."""
        pairs = [seq[:-1].astype(np.int64) * n_indices + seq[1:] for seq in sequences if len(seq) >= 2]
        codes, counts = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True)
        previous, following = codes // n_indices, codes % n_indices
        order = np.lexsort((following, -counts, previous))  # by previous item, most frequent first
        previous, following, counts = previous[order], following[order], counts[order]
        starts = np.searchsorted(previous, np.arange(n_indices))
        keep = np.arange(len(previous)) - starts[previous] < max_successors
        previous, following, counts = previous[keep], following[keep], counts[keep]
        indptr = np.searchsorted(previous, np.arange(n_indices + 1)).astype(np.int64)
        return cls(indptr, following.astype(np.int64), np.log1p(counts).astype(np.float32), window)

    def weighted(self, transition_weight: float, repeat_bias: float) -> SequencePrior:
        return dataclasses.replace(self, transition_weight=float(transition_weight), repeat_bias=float(repeat_bias))

    @property
    def active(self) -> bool:
        return self.transition_weight != 0.0 or self.repeat_bias != 0.0

    def components(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, log counts, seen) of every item the prior touches for `history` (item indices, oldest
        first): the successors of its last item and the items of its window, each index once."""
        window = np.asarray(history_window(history, self.window), dtype=np.int64)
        if len(window) == 0:
            empty = np.zeros(0, np.int64)
            return empty, np.zeros(0, np.float32), np.zeros(0, np.float32)
        last = int(window[-1])
        start, stop = (self.indptr[last], self.indptr[last + 1]) if last + 1 < len(self.indptr) else (0, 0)
        indices, position = np.unique(np.concatenate([self.successors[start:stop], window]), return_inverse=True)
        log_counts = np.zeros(len(indices), np.float32)
        log_counts[position[: stop - start]] = self.log_counts[start:stop]
        seen = np.zeros(len(indices), np.float32)
        seen[position[stop - start:]] = 1.0
        return indices, log_counts, seen

    def terms(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(indices, score added to each) for `history`; every other item gets nothing."""
        indices, log_counts, seen = self.components(history)
        return indices, self.combine(log_counts, seen, self.transition_weight, self.repeat_bias)

    @staticmethod
    def combine(log_counts: np.ndarray, seen: np.ndarray, transition_weight: float, repeat_bias: float) -> np.ndarray:
        """The prior's term from its `components` at the given weights (the fit scores a grid of them)."""
        return transition_weight * log_counts + repeat_bias * seen

    # ---- bundle files -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {INDPTR: self.indptr, SUCCESSORS: self.successors, LOG_COUNTS: self.log_counts}

    def spec(self) -> PriorSpec:
        return PriorSpec(self.transition_weight, self.repeat_bias, self.window, MAX_SUCCESSORS)

    @classmethod
    def from_bundle(cls, bundle: Any) -> SequencePrior | None:
        """The bundle's prior (None when it has none)."""
        spec = bundle.manifest.scoring.prior
        if spec is None:
            return None
        return cls(bundle.array(INDPTR), bundle.array(SUCCESSORS), bundle.array(LOG_COUNTS), spec.window,
                   spec.transition_weight, spec.repeat_bias)
