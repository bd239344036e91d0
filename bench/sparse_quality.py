"""Row-sparse item tables against dense AdamW: the same training, the same validation NDCG@10?

    python bench/sparse_quality.py --epochs 40 --seeds 1 2 --out docs/sparse_rows.json

ml-latest-small, 5-core, the `accuracy` preset at max_len 200 (issue 15's protocol), the trainer's own data
loading, split, model builder and `train_model`; per seed one run with `sparse_items=True` (what ships in
sampled-softmax mode: row-sparse gradients, RowAdamW) and one with `sparse_items=False` (dense AdamW over every
table, as before). A fixed number of epochs (no early stopping, no time budget), validated every
--eval-every epochs on the trainer's validation users. Prints and writes one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RATINGS = REPO.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def run(seed: int, sparse: bool, epochs: int, eval_every: int) -> dict:
    from seqrec.services.trainer.bundle_builder import model_config
    from seqrec.services.trainer.data import load_interactions
    from seqrec.services.trainer.model import BERT4Rec
    from seqrec.services.trainer.split import leave_one_out
    from seqrec.services.trainer.train import train_model
    from seqrec.shared.config import INT_LIMITS, DataConfig, build_hparams

    torch.manual_seed(seed)
    np.random.seed(seed)
    data = load_interactions(DataConfig(data=str(RATINGS), user_col="userId", item_col="movieId",
                                        time_col="timestamp", min_user_interactions=5, min_item_interactions=5))
    split = leave_one_out(data.sequences)
    hp = build_hparams("accuracy", max_len=200, epochs=epochs, eval_every=eval_every,
                       patience=INT_LIMITS["patience"], time_budget=0)
    counts = np.bincount(np.concatenate(split.train), minlength=data.vocab.n_indices)
    model = BERT4Rec(model_config(hp, data.vocab.n_indices, hybrid=False))
    model.init_output_bias(torch.from_numpy(counts))
    started = time.perf_counter()
    result = train_model(model, split, hp, data.vocab.n_items, counts, seed, progress=False, sparse_items=sparse)
    curve = [{"epoch": r.epoch, "valid_ndcg@10": r.valid["ndcg@10"], "valid_hr@10": r.valid["hr@10"]}
             for r in result.history if r.valid]
    return {"seed": seed, "tables": "row-sparse" if sparse else "dense AdamW", "epochs": epochs,
            "best_epoch": result.best_epoch, "best_valid": result.best_valid, "curve": curve,
            "train_s": result.train_seconds, "wall_s": time.perf_counter() - started,
            "sequences_per_s": float(np.mean([r.sequences_per_s for r in result.history]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "sparse_rows.json")
    args = parser.parse_args(argv)
    lines = []
    for seed in args.seeds:
        for sparse in (True, False):
            line = run(seed, sparse, args.epochs, args.eval_every)
            print(json.dumps(line), flush=True)
            lines.append(line)
    args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
