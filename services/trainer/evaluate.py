"""Full-ranking evaluation: every catalog item is scored for every user (no sampled negatives).

Inputs go through `seqrec.shared.history.encode_histories`, the function the ranker serves with, and
scores through `seqrec.shared.scoring.Scorer`, the contract the ranker serves with, so offline metrics
measure exactly what serving computes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import EvalSet
from seqrec.shared.history import encode_histories
from seqrec.shared.metrics import exclude_seen as exclude_seen_items
from seqrec.shared.metrics import ranking_metrics, target_ranks
from seqrec.shared.scoring import Scorer

SAMPLED_NEGATIVES = 100
EVAL_BLOCK_CELLS = 50_000_000  # users × items scored at once (200 MB of float32)


@torch.no_grad()
def intents(model: BERT4Rec, histories: list[np.ndarray], mask_index: int, batch_size: int = 256) -> np.ndarray:
    """Intents [len(histories), dim] of item-index histories, as the exported encoder computes them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [np.zeros((0, model.cfg.layout.dim), dtype=np.float32)]
    for start in range(0, len(histories), batch_size):
        ids = encode_histories(histories[start:start + batch_size], model.cfg.max_len, mask_index)
        out.append(model(torch.from_numpy(ids).to(device)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def model_scorer(model: BERT4Rec) -> Scorer:
    """The scoring contract over the model's own item rows, with nothing added after training (no prior, no
    exposure boost): what validation during training scores with."""
    return Scorer.from_parts(model.item_parts())


def score_histories(model: BERT4Rec, histories: list[np.ndarray], mask_index: int, scorer: Scorer | None = None,
                    batch_size: int = 256) -> np.ndarray:
    """Scores [len(histories), n_items] for items 1..n_items (column j is item index j + 1) through `scorer`
    (default: `model_scorer`), exactly as the ranker scores."""
    scorer = model_scorer(model) if scorer is None else scorer
    return scorer.scores(intents(model, histories, mask_index, batch_size), histories)


def _sampled_ranks(scores: np.ndarray, eval_set: EvalSet, popularity: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Rank of the target among 100 popularity-sampled negatives the user has not seen.

    Only items with a training count can be drawn; when a user leaves 100 or fewer of them unseen,
    all of those are the negatives (the draw must end on tiny catalogs and users who saw everything).
    """
    n_items = scores.shape[1]
    weights = popularity[1: n_items + 1].astype(np.float64)  # items only: no padding, no [MASK]
    drawable = weights > 0
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.empty(len(eval_set), dtype=np.int64)
    for row, (history, target) in enumerate(zip(eval_set.inputs, eval_set.targets, strict=True)):
        excluded = set(history.tolist()) | {int(target)}
        left = int(drawable.sum()) - sum(1 for i in excluded if drawable[i - 1])
        if left <= SAMPLED_NEGATIVES:
            chosen = [i + 1 for i in np.flatnonzero(drawable).tolist() if i + 1 not in excluded]
        else:
            chosen_set: set[int] = set()
            while len(chosen_set) < SAMPLED_NEGATIVES:
                draws = np.searchsorted(cdf, rng.random(2 * SAMPLED_NEGATIVES), side="right") + 1
                for item in draws.tolist():
                    if item <= n_items and item not in excluded:
                        chosen_set.add(item)
                        if len(chosen_set) == SAMPLED_NEGATIVES:
                            break
            chosen = sorted(chosen_set)
        target_score = scores[row, target - 1]
        ranks[row] = int((scores[row, np.asarray(chosen, dtype=np.int64) - 1] > target_score).sum())
    return ranks


def _block_ranks(model: BERT4Rec, scorer: Scorer, block: EvalSet, mask_index: int, exclude_seen: bool, batch_size: int,
                 popularity: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-ranking ranks (and sampled-100 ranks) of one block of users."""
    scores = score_histories(model, block.inputs, mask_index, scorer, batch_size)
    target_cols = block.targets - 1
    if exclude_seen:
        exclude_seen_items(scores, block.inputs, target_cols)
    sampled = None if popularity is None else _sampled_ranks(scores, block, popularity, rng)
    return target_ranks(scores, target_cols), sampled


def _blocks(eval_set: EvalSet, mask_index: int) -> Iterator[EvalSet]:
    """`eval_set` in consecutive blocks of users whose score matrix stays under EVAL_BLOCK_CELLS floats."""
    block_users = max(1, EVAL_BLOCK_CELLS // max(mask_index - 1, 1))
    for start in range(0, len(eval_set), block_users):
        yield EvalSet(eval_set.inputs[start:start + block_users], eval_set.targets[start:start + block_users])


def full_ranks(model: BERT4Rec, eval_set: EvalSet, mask_index: int, exclude_seen: bool, scorer: Scorer,
               batch_size: int = 256) -> np.ndarray:
    """Each user's full-ranking rank of their target (0 = first) through `scorer`, in blocks as `evaluate`."""
    rng = np.random.default_rng(0)  # unused: no sampled negatives
    return np.concatenate([np.zeros(0, dtype=np.int64)] + [
        _block_ranks(model, scorer, block, mask_index, exclude_seen, batch_size, None, rng)[0]
        for block in _blocks(eval_set, mask_index)])


def evaluate(model: BERT4Rec, eval_set: EvalSet, mask_index: int, exclude_seen: bool = False,
             popularity: np.ndarray | None = None, seed: int = 0, batch_size: int = 256,
             scorer: Scorer | None = None) -> dict[str, float]:
    """HR@{1,5,10,20}, NDCG@{1,5,10,20} and MRR by full ranking; `sampled_*` with `popularity` given. Scores
    through `scorer` (the bundle's: prior and exposure boost included), by default `model_scorer(model)`.

    Users are scored in blocks whose score matrix stays under EVAL_BLOCK_CELLS floats, so evaluation
    memory does not grow with users × catalog (a 1M-item catalog scored 10k users at once needed ~100 GB).
    """
    if len(eval_set) == 0:
        return {}
    rng = np.random.default_rng(seed)  # drawn block after block: the same draws as scoring all at once
    scorer = model_scorer(model) if scorer is None else scorer
    full, sampled = [], []
    for block in _blocks(eval_set, mask_index):
        ranks, sampled_ranks = _block_ranks(model, scorer, block, mask_index, exclude_seen, batch_size, popularity, rng)
        full.append(ranks)
        if sampled_ranks is not None:
            sampled.append(sampled_ranks)
    metrics = ranking_metrics(np.concatenate(full))
    metrics["users"] = float(len(eval_set))
    if popularity is not None:
        sampled_metrics = ranking_metrics(np.concatenate(sampled), cutoffs=(10,))
        metrics.update({f"sampled100_{k}": v for k, v in sampled_metrics.items()})
    return metrics
