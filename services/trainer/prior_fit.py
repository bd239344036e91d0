"""Fit the score's post-training weights on the validation split, after the encoder is trained: the sequence
prior's two (sequential rules, repeat bias) and the weight of the factorized transitions.

The rules come from the training sequences alone (the validation and test transitions are not in them).
The weights are the point of a small grid with the best validation NDCG@10 over the full catalog, seen
items kept (the model's own ranking); ties go to the smaller prior weights and to the factorized transitions
as trained (weight 1). Test users are never looked at.

The factorized transitions are trained with the encoder, which learns far more slowly without them; at
scoring time they can overlap the counted transitions, so their weight in the score is fitted with the prior's
(`bundle_builder.scoring_parts` applies it to the item rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqrec.services.trainer.evaluate import intents
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import EvalSet
from seqrec.shared.metrics import ranking_metrics
from seqrec.shared.scoring import Scorer
from seqrec.shared.sequence_prior import SequencePrior

TRANSITION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
REPEAT_BIASES = (0.0, -0.5, -1.0, -2.0, -4.0, -8.0, -16.0, -32.0)  # -32 nats: seen items go last
FACTORIZED_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # as trained first: a tie keeps the trained term
CALIBRATION_USERS = 4096  # validation users the grid is scored on (all of them below this)
BLOCK_CELLS = 50_000_000  # users × items scored at once


@dataclass(frozen=True)
class PriorFit:
    prior: SequencePrior
    factorized_weight: float  # the factorized transitions' weight in the score
    encoder_ndcg: float  # validation NDCG@10 of the encoder alone, on the calibration users
    ndcg: float  # ... with the fitted prior
    users: int

    def summary(self) -> dict[str, float | int]:
        return {"transition_weight": self.prior.transition_weight, "repeat_bias": self.prior.repeat_bias,
                "factorized_weight": self.factorized_weight,
                "valid_ndcg@10_encoder_only": round(self.encoder_ndcg, 4), "valid_ndcg@10": round(self.ndcg, 4),
                "calibration_users": self.users, "transition_pairs": len(self.prior.successors)}


def _grid_ranks(scores: np.ndarray, factorized: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
                prior: SequencePrior) -> np.ndarray:
    """Ranks [len(FACTORIZED_WEIGHTS), len(TRANSITION_WEIGHTS), len(REPEAT_BIASES), users] of the targets (columns
    target - 1) when `factorized` (the factorized transitions' part of `scores`, which has no prior yet) is
    weighted and the prior's term (`SequencePrior.combine`) at each grid point is added."""
    parts = [prior.components(history) for history in histories]
    rows = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts])
    cols = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)]) - 1
    log_counts = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.float32)])
    seen = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.float32)])
    inside = (cols >= 0) & (cols < scores.shape[1])
    rows, cols, log_counts, seen = rows[inside], cols[inside], log_counts[inside], seen[inside]
    user = np.arange(len(targets))
    out = np.empty((len(FACTORIZED_WEIGHTS), len(TRANSITION_WEIGHTS), len(REPEAT_BIASES), len(targets)),
                   dtype=np.int64)
    for f, scale in enumerate(FACTORIZED_WEIGHTS):
        weighted = scores + np.float32(scale - 1.0) * factorized if scale != 1.0 else scores.copy()
        base = weighted[rows, cols].copy()
        for a, weight in enumerate(TRANSITION_WEIGHTS):
            for b, bias in enumerate(REPEAT_BIASES):
                weighted[rows, cols] = base + SequencePrior.combine(log_counts, seen, weight, bias)
                out[f, a, b] = np.count_nonzero(weighted > weighted[user, targets - 1][:, None], axis=1)
    return out


def sequence_rules(sequences: Sequence[np.ndarray], mask_index: int, max_len: int) -> SequencePrior:
    """The prior's rules over `sequences` for a model of `max_len` with this [MASK] index, weights zero."""
    return SequencePrior.from_sequences(sequences, mask_index + 1, max_len - 1)


def fit_sequence_prior(model: BERT4Rec, scorer: Scorer, train: Sequence[np.ndarray], valid: EvalSet,
                       mask_index: int, seed: int = 0) -> PriorFit:
    """Sequential rules over `train` and the grid point that ranks `valid` best with `scorer` (the model's rows,
    no prior yet); returns the weighted prior and the factorized transitions' weight, the model and scorer are
    left as they are."""
    prior = sequence_rules(train, mask_index, model.cfg.max_len)
    layout = model.cfg.layout
    without = scorer.rows.copy()
    without[:, layout.transition_cols] = 0.0
    no_factorized = Scorer(without)
    users = valid.sample(CALIBRATION_USERS, seed) if len(valid) > CALIBRATION_USERS else valid
    block = max(1, BLOCK_CELLS // max(mask_index - 1, 1))
    ranks = []
    for start in range(0, len(users), block):
        histories, targets = users.inputs[start:start + block], users.targets[start:start + block]
        user_intents = intents(model, histories, mask_index)
        scores = scorer.with_prior(None).scores(user_intents, histories)
        factorized = scores - no_factorized.scores(user_intents, histories)
        ranks.append(_grid_ranks(scores, factorized, histories, targets, prior))
        del scores, factorized
    grid = np.concatenate(ranks, axis=3)
    ndcg = np.array([ranking_metrics(r, cutoffs=(10,))["ndcg@10"] for r in grid.reshape(-1, grid.shape[3])])
    f, a, b = np.unravel_index(np.argmax(ndcg), grid.shape[:3])  # first maximum: trained term, smallest weights
    ndcg = ndcg.reshape(grid.shape[:3])
    return PriorFit(prior.weighted(TRANSITION_WEIGHTS[a], REPEAT_BIASES[b]), FACTORIZED_WEIGHTS[f],
                    float(ndcg[0, 0, 0]), float(ndcg[f, a, b]), len(users))
