"""Fit the sequence prior's two weights (sequential rules, repeat bias) on the validation split, after the
encoder is trained.

The rules come from the training sequences alone (the validation and test transitions are not in them).
The grid is scored by validation NDCG@10 over the full catalog, seen items kept (the model's own ranking).
The choice is the one-standard-error rule: among the grid points whose mean NDCG@10 is within one standard
error (paired over users) of the best point's, the largest rules weight, then the best repeat bias. The
encoder's validation score is optimistic — its epoch was selected on these same users — while the counted
rules have nothing selected on them, so among points the validation split cannot tell apart the one leaning
least on the encoder is chosen. Test users are never looked at.

The encoder's own parts (its affinity, the factorized transitions it is trained with, the item biases) keep
the weight they were trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqrec.services.trainer.evaluate import intents
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import EvalSet
from seqrec.shared.metrics import ndcg_gains
from seqrec.shared.scoring import Scorer
from seqrec.shared.sequence_prior import SequencePrior

TRANSITION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
REPEAT_BIASES = (0.0, -0.5, -1.0, -2.0, -4.0, -8.0, -16.0, -32.0)  # -32 nats: seen items go last
CALIBRATION_USERS = 4096  # validation users the grid is scored on (all of them below this)
BLOCK_CELLS = 50_000_000  # users × items scored at once
CUTOFF = 10


@dataclass(frozen=True)
class PriorFit:
    prior: SequencePrior
    encoder_ndcg: float  # validation NDCG@10 of the encoder alone, on the calibration users
    best_ndcg: float  # ... of the grid's best point
    ndcg: float  # ... at the chosen point (within one standard error of the best)
    standard_error: float  # of the best point's paired NDCG@10 difference to the chosen one
    users: int

    def summary(self) -> dict[str, float | int]:
        return {"transition_weight": self.prior.transition_weight, "repeat_bias": self.prior.repeat_bias,
                "valid_ndcg@10_encoder_only": round(self.encoder_ndcg, 4), "valid_ndcg@10": round(self.ndcg, 4),
                "valid_ndcg@10_grid_best": round(self.best_ndcg, 4),
                "standard_error": round(self.standard_error, 4),
                "calibration_users": self.users, "transition_pairs": len(self.prior.successors)}


def _grid_gains(scores: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
                prior: SequencePrior) -> np.ndarray:
    """NDCG@10 gains [len(TRANSITION_WEIGHTS), len(REPEAT_BIASES), users] of the targets (columns target - 1)
    when the prior's term (`SequencePrior.combine`) at each grid point is added to `scores` (no prior yet)."""
    parts = [prior.components(history) for history in histories]
    rows = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts])
    cols = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)]) - 1
    log_counts = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.float32)])
    seen = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.float32)])
    inside = (cols >= 0) & (cols < scores.shape[1])
    rows, cols, log_counts, seen = rows[inside], cols[inside], log_counts[inside], seen[inside]
    user = np.arange(len(targets))
    out = np.empty((len(TRANSITION_WEIGHTS), len(REPEAT_BIASES), len(targets)))
    weighted = scores.copy()
    base = weighted[rows, cols].copy()
    for a, weight in enumerate(TRANSITION_WEIGHTS):
        for b, bias in enumerate(REPEAT_BIASES):
            weighted[rows, cols] = base + SequencePrior.combine(log_counts, seen, weight, bias)
            out[a, b] = ndcg_gains(np.count_nonzero(weighted > weighted[user, targets - 1][:, None], axis=1),
                                   CUTOFF)
    return out


def one_standard_error_choice(gains: np.ndarray) -> tuple[int, int, float]:
    """(transition index, repeat-bias index, standard error) chosen from per-user gains [weights, biases, users]:
    the largest transition weight with a point whose mean is within one paired standard error of the best
    point's, and at that weight the best repeat bias (first maximum: the smaller bias)."""
    means = gains.mean(axis=2)
    best = np.unravel_index(np.argmax(means), means.shape)
    users = gains.shape[2]
    gaps = gains[best][None, None, :] - gains
    errors = gaps.std(axis=2, ddof=1) / np.sqrt(users) if users > 1 else np.zeros(means.shape)
    close = gaps.mean(axis=2) <= errors
    a = int(np.flatnonzero(close.any(axis=1)).max())
    b = int(np.argmax(np.where(close[a], means[a], -np.inf)))
    return a, b, float(errors[a, b])


def sequence_rules(sequences: Sequence[np.ndarray], mask_index: int, max_len: int) -> SequencePrior:
    """The prior's rules over `sequences` for a model of `max_len` with this [MASK] index, weights zero."""
    return SequencePrior.from_sequences(sequences, mask_index + 1, max_len - 1)


def fit_sequence_prior(model: BERT4Rec, scorer: Scorer, train: Sequence[np.ndarray], valid: EvalSet,
                       mask_index: int, seed: int = 0) -> PriorFit:
    """Sequential rules over `train` and the grid point chosen on `valid` with `scorer` (the model's rows, no
    prior yet); returns the weighted prior, the model and scorer are left as they are."""
    prior = sequence_rules(train, mask_index, model.cfg.max_len)
    users = valid.sample(CALIBRATION_USERS, seed) if len(valid) > CALIBRATION_USERS else valid
    block = max(1, BLOCK_CELLS // max(mask_index - 1, 1))
    gains = []
    for start in range(0, len(users), block):
        histories, targets = users.inputs[start:start + block], users.targets[start:start + block]
        scores = scorer.with_prior(None).scores(intents(model, histories, mask_index), histories)
        gains.append(_grid_gains(scores, histories, targets, prior))
        del scores
    grid = np.concatenate(gains, axis=2)
    a, b, error = one_standard_error_choice(grid)
    means = grid.mean(axis=2)
    return PriorFit(prior.weighted(TRANSITION_WEIGHTS[a], REPEAT_BIASES[b]), float(means[0, 0]),
                    float(means.max()), float(means[a, b]), error, len(users))
