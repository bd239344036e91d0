"""The wall-clock budget ends training with the best validated weights; the refit teaches the shipped model every
interaction while the bundle keeps reporting the selection run's metrics."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqrec.services.trainer.bundle_builder import model_config
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.pipeline import run_training
from seqrec.services.trainer.split import everything, leave_one_out
from seqrec.services.trainer.train import train_model
from seqrec.shared import bundle as b
from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
from seqrec.shared.history import encode_histories
from seqrec.shared.sequence_prior import SequencePrior


def _small(seed: int = 0):
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(1, 61, size=int(rng.integers(5, 30))) for _ in range(200)]
    hp = build_hparams(max_len=10, hidden_size=16, heads=2, batch_size=16, epochs=50, eval_every=5, patience=10)
    torch.manual_seed(0)
    model = BERT4Rec(model_config(hp, 62, hybrid=False))
    return sequences, hp, model


def test_a_spent_budget_stops_after_one_validated_epoch():
    sequences, hp, model = _small()
    split = leave_one_out(sequences)
    counts = np.bincount(np.concatenate(split.train), minlength=62)
    result = train_model(model, split, hp, 60, counts, seed=1, progress=False, deadline=time.monotonic())
    assert len(result.history) == 1 and result.stopped_by_budget and not result.stopped_early
    assert result.history[0].valid and result.best_epoch == 1  # validated although eval_every is 5


def test_refit_trains_every_epoch_without_validation_and_keeps_the_last_weights():
    sequences, hp, model = _small()
    split = everything(sequences)
    assert len(split.valid) == 0 and sum(len(s) for s in split.train) == sum(len(s) for s in sequences)
    before = model.item_emb.weight.detach().clone()
    counts = np.bincount(np.concatenate(split.train), minlength=62)
    result = train_model(model, split, build_hparams(**{**hp.__dict__, "epochs": 3}), 60, counts, seed=1,
                         progress=False, select=False)
    assert len(result.history) == 3 and all(not r.valid for r in result.history)
    assert result.best_epoch == 0 and not torch.equal(before, model.item_emb.weight)


def _train(data: Path, out: Path, refit_share: float) -> tuple[Path, dict]:
    cfg = TrainConfig(data=DataConfig(data=str(data)), seed=3,
                      hparams=build_hparams(max_len=12, hidden_size=16, heads=2, epochs=6, batch_size=64, patience=6,
                                            eval_every=1, negative_samples=20, refit_share=refit_share))
    return run_training(cfg, out, progress=False)


def _intents(path: Path) -> np.ndarray:
    bundle = b.Bundle.open(path)
    histories = [bundle.vocab().encode(row["items"])[0] for row in bundle.iter_jsonl(b.HISTORIES)]
    session = ort.InferenceSession(str(bundle.file(b.ENCODER)), providers=["CPUExecutionProvider"])
    return session.run(None, {"item_ids": encode_histories(histories, bundle.max_len, bundle.mask_index)})[0]


def test_the_shipped_model_learns_the_held_out_interactions(series_csv: Path, tmp_path: Path):
    plain_path, plain = _train(series_csv, tmp_path / "plain", 0.0)
    refit_path, refit = _train(series_csv, tmp_path / "refit", 0.5)
    assert plain["refit"] == {"epochs": 0}
    assert refit["refit"]["epochs"] == math.ceil(0.5 * refit["best_epoch"])
    for key in ("valid", "test", "best_epoch", "epochs"):  # the reported numbers are the selection run's
        assert refit[key] == plain[key]
    assert not np.allclose(_intents(plain_path), _intents(refit_path))  # ... the shipped encoder learned more
    bundle = b.Bundle.open(refit_path)
    every = [np.asarray(bundle.vocab().encode(row["items"])[0]) for row in bundle.iter_jsonl(b.HISTORIES)]
    shipped, fitted = SequencePrior.from_bundle(bundle), SequencePrior.from_bundle(b.Bundle.open(plain_path))
    expected = SequencePrior.from_sequences(every, bundle.mask_index + 1, bundle.max_len - 1)
    np.testing.assert_array_equal(shipped.successors, expected.successors)  # counts over every interaction
    assert (shipped.transition_weight, shipped.repeat_bias) == (fitted.transition_weight, fitted.repeat_bias)


def test_a_budget_stop_is_reported_with_the_setting_to_change():
    from seqrec.services.trainer.messages import warning_message
    from seqrec.services.trainer.report import training_warnings

    cfg = TrainConfig(data=DataConfig(data="x.csv"), hparams=build_hparams(epochs=1000, time_budget=30))
    warnings = training_warnings(cfg, {}, [], 40, {}, {}, False, "cpu", stopped_by_budget=True)
    text = next(w for w in warnings if "time budget" in w)
    assert "--time-budget" in text and "of 1000 epochs (best 40)" in text
    assert warning_message(text).code == "time_budget"
