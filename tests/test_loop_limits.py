"""The training loop's own bounds (what benchmarks use instead of replacing its functions) and its counters."""

from __future__ import annotations

import numpy as np
import torch

from seqrec.services.trainer.bundle_builder import model_config
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import leave_one_out, training_windows
from seqrec.services.trainer.train import LoopLimits, train_model
from seqrec.shared.config import build_hparams


def _setup(n_items: int = 60, n_users: int = 200):
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, n_items + 1, size=int(rng.integers(5, 30))) for _ in range(n_users)]
    split = leave_one_out(sequences)
    hp = build_hparams(max_len=10, hidden_size=16, heads=2, batch_size=16, epochs=3, eval_every=1, patience=10)
    torch.manual_seed(0)
    model = BERT4Rec(model_config(hp, n_items + 2, hybrid=False))
    counts = np.bincount(np.concatenate(split.train), minlength=n_items + 2)
    return split, hp, model, counts, n_items


def test_steps_per_epoch_bound_each_epoch_and_the_counters_add_up():
    split, hp, model, counts, n_items = _setup()
    calls = []

    def validate(m, eval_set, mask_index):
        calls.append(len(eval_set))
        return {"ndcg@10": 0.1 * len(calls), "hr@10": 0.0}

    result = train_model(model, split, hp, n_items, counts, seed=1, progress=False,
                         limits=LoopLimits(steps_per_epoch=3, validate=validate, valid_users=50, probe_users=7))
    assert [r.steps for r in result.history] == [3, 3, 3]
    assert all(r.sequences == 3 * hp.batch_size for r in result.history)  # full batches: windows >> 3 * 16
    assert all(r.sequences <= r.positions <= r.sequences * hp.max_len for r in result.history)
    assert all(0 < r.masked <= r.positions for r in result.history)
    assert calls == [50, 7] * 3  # validation and probe sample sizes, every epoch


def test_without_limits_an_epoch_covers_every_window():
    split, hp, model, counts, n_items = _setup()
    result = train_model(model, split, hp, n_items, counts, seed=1, progress=False)
    windows = training_windows(split.train, hp.max_len, hp.window_stride, hp.sampling)
    assert all(r.sequences == len(windows) for r in result.history)
    assert result.history[-1].valid  # the trainer's own full-ranking validation ran
