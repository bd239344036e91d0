"""Evaluation in blocks of users gives exactly the metrics of scoring everyone at once."""

from __future__ import annotations

import numpy as np
import torch

from seqrec.services.trainer import evaluate as ev
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.split import EvalSet


def test_blocked_evaluation_equals_one_block(monkeypatch):
    torch.manual_seed(0)
    n_items = 300
    model = BERT4Rec(ModelConfig(n_indices=n_items + 2, max_len=10, hidden_size=16, heads=2)).eval()
    rng = np.random.default_rng(1)
    inputs = [rng.integers(1, n_items + 1, size=int(rng.integers(1, 9))) for _ in range(97)]
    eval_set = EvalSet(inputs, rng.integers(1, n_items + 1, size=97))
    popularity = np.r_[0, rng.integers(0, 50, size=n_items), 0]
    whole = ev.evaluate(model, eval_set, n_items + 1, exclude_seen=True, popularity=popularity, seed=3)
    monkeypatch.setattr(ev, "EVAL_BLOCK_CELLS", 10 * n_items)  # blocks of 10 users
    blocked = ev.evaluate(model, eval_set, n_items + 1, exclude_seen=True, popularity=popularity, seed=3)
    assert blocked == whole and whole["users"] == 97
