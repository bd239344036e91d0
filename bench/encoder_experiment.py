"""Encoder-alone experiment on the trainer's inner split (no prior, no refit, no bundle): what a setting does to
validation NDCG@10 per epoch, and the best weights' test NDCG@10. Needs the files `bench/served_quality.py` writes.

    python bench/encoder_experiment.py ml 8 causal=true eval_every=10
    python bench/encoder_experiment.py beauty 5 causal=true eval_every=1 dropout=0.5
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from seqrec.services.trainer.bundle_builder import model_config
from seqrec.services.trainer.data import load_interactions
from seqrec.services.trainer.evaluate import evaluate
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import leave_one_out
from seqrec.services.trainer.train import EpochRecord, train_model
from seqrec.shared.config import DataConfig, build_hparams

MAX_LEN = {"ml": 200, "beauty": 50}


def _value(text: str) -> bool | int | float:
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main() -> None:
    name, minutes = sys.argv[1], float(sys.argv[2])
    overrides = {k: _value(v) for k, v in (arg.split("=", 1) for arg in sys.argv[3:])}
    hp = build_hparams("accuracy", **{"max_len": MAX_LEN[name], "epochs": 1000, "time_budget": minutes,
                                      "patience": 1000, **overrides})
    data = load_interactions(DataConfig(data=f"/tmp/seqrec-served/{name}_train.csv"))
    split = leave_one_out(data.sequences)
    torch.manual_seed(1)
    model = BERT4Rec(model_config(hp, data.vocab.n_indices, hybrid=False))
    counts = np.bincount(np.concatenate(split.train), minlength=data.vocab.n_indices)
    model.init_output_bias(torch.from_numpy(counts))
    started = time.time()

    def show(record: EpochRecord) -> None:
        if record.valid:
            print(f"epoch {record.epoch} {time.time() - started:.0f} s loss {record.loss:.3f} "
                  f"valid {record.valid['ndcg@10']:.4f} probe {record.train_probe.get('ndcg@10', 0):.4f}", flush=True)

    result = train_model(model, split, hp, data.vocab.n_items, counts, 1, show, progress=False, n_warm=data.n_warm)
    test = evaluate(result.model, split.test, data.vocab.n_items + 1)
    print(json.dumps({"overrides": overrides, "best_epoch": result.best_epoch,
                      "valid_ndcg@10": round(result.best_valid["ndcg@10"], 4),
                      "test_ndcg@10": round(test["ndcg@10"], 4), "test_hr@10": round(test["hr@10"], 4)}))


if __name__ == "__main__":
    main()
