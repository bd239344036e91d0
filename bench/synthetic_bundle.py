"""A valid seqrec bundle for a synthetic catalog, built without training (for serving benchmarks).

    python bench/synthetic_bundle.py --items 10000 --users 10000 --out /tmp/seqrec-bench/bundles

The encoder is a randomly initialised BERT4Rec of the architecture the trainer builds (`model_config`:
transition columns included; output bias at the log item frequency, as the trainer starts it), and the
bundle is written by the trainer's own bundle builder (`services/trainer/bundle_builder.py`) with the
transition counts of the synthetic histories as its sequence prior at weights (1, -8), so serving pays
for every term it pays for in production. Item popularity follows a Zipf law; every item carries typed
metadata (`category` string, `in_stock` bool, `price` double). Answers are meaningless; costs are realistic.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
from seqrec.shared.sequence_prior import SequencePrior
from seqrec.shared.vocab import ItemVocab

ZIPF_EXPONENT = 1.0  # popularity of the item at rank r is proportional to r ** -ZIPF_EXPONENT
N_CATEGORIES = 20
MIN_HISTORY, MAX_HISTORY = 5, 100
METADATA_SCHEMA = {"category": "string", "in_stock": "bool", "price": "double"}
START_TIME = 1_700_000_000  # seconds; publish stores milliseconds


def item_ids(n_items: int) -> list[str]:
    """`i000000`, `i000001`, ... (at least six digits)."""
    width = max(6, len(str(n_items - 1)))
    return [f"i{n:0{width}d}" for n in range(n_items)]


def zipf_probabilities(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Per-item sampling probability: Zipf over a random permutation (popularity independent of id)."""
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    probs = np.empty(n_items)
    probs[rng.permutation(n_items)] = weights / weights.sum()
    return probs


def synthetic_histories(n_users: int, probs: np.ndarray, rng: np.random.Generator
                        ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """User ids, item-index sequences (1-based, popularity-skewed, 5..100 long) and increasing timestamps."""
    lengths = rng.integers(MIN_HISTORY, MAX_HISTORY + 1, size=n_users)
    draws = rng.choice(len(probs), size=int(lengths.sum()), p=probs) + 1
    gaps = rng.integers(30, 3600, size=len(draws))
    cuts = np.cumsum(lengths)[:-1]
    starts = START_TIME + rng.integers(0, 86_400 * 30, size=n_users)
    sequences = np.split(draws, cuts)
    stamps = [start + np.cumsum(g) for start, g in zip(starts, np.split(gaps, cuts), strict=True)]
    width = max(6, len(str(n_users - 1)))
    return [f"u{n:0{width}d}" for n in range(n_users)], sequences, stamps


def item_rows(ids: list[str], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """items.jsonl rows: display name and typed metadata for every item."""
    categories = rng.integers(0, N_CATEGORIES, size=len(ids))
    in_stock = rng.random(len(ids)) < 0.8
    prices = np.round(rng.lognormal(3.0, 1.0, size=len(ids)), 2)
    for n, item in enumerate(ids):
        yield {"item_id": item, "display_name": f"Item {item[1:]}",
               "meta": {"category": f"cat{int(categories[n]):02d}", "in_stock": bool(in_stock[n]),
                        "price": float(prices[n])}}


PRIOR_WEIGHTS = (1.0, -8.0)  # transition weight, repeat bias: active, as a fitted prior is on real data


def make_bundle(out_dir: str | Path, n_items: int, n_users: int, max_len: int = 50, hidden: int = 64,
                seed: int = 0) -> Path:
    """Write a verified synthetic bundle under `out_dir` and return its path (`out_dir/<version>`)."""
    import torch  # only to build the encoder; serving never imports torch

    from seqrec.services.trainer.bundle_builder import BundleContents, model_config, write_bundle
    from seqrec.services.trainer.data import Interactions, ItemInfo
    from seqrec.services.trainer.model import BERT4Rec

    if n_items < 2 or n_users < 1:
        raise ValueError(f"need at least 2 items and 1 user, got {n_items} items and {n_users} users")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    vocab = ItemVocab(item_ids(n_items))
    users, sequences, stamps = synthetic_histories(n_users, zipf_probabilities(n_items, rng), rng)
    items = {row["item_id"]: ItemInfo(row["display_name"], row["meta"]) for row in item_rows(vocab.ids(), rng)}
    stats = {"users": n_users, "items": n_items, "rows_used": int(sum(map(len, sequences))),
             "rows_read": int(sum(map(len, sequences))), "metadata_schema": METADATA_SCHEMA}
    data = Interactions(vocab, users, sequences, [ts.astype(np.float64) for ts in stamps], items, stats, n_warm=n_items)
    hp = build_hparams(max_len=max_len, hidden_size=hidden, epochs=1)
    cfg = TrainConfig(data=DataConfig(data="synthetic", name_col="display_name"), hparams=hp, seed=seed)
    model = BERT4Rec(model_config(hp, vocab.n_indices, hybrid=False))
    model.init_output_bias(torch.from_numpy(np.bincount(np.concatenate(sequences), minlength=vocab.n_indices)))
    prior = SequencePrior.from_sequences(sequences, vocab.n_indices, max_len - 1).weighted(*PRIOR_WEIGHTS)
    extra = {"synthetic": {"seed": seed, "zipf_exponent": ZIPF_EXPONENT, "history_lengths": [MIN_HISTORY, MAX_HISTORY],
                           "prior_weights": list(PRIOR_WEIGHTS), "note": "untrained; answers are meaningless"}}
    return write_bundle(out_dir, model, BundleContents(cfg, data, prior, {"valid": {}, "test": {}}, extra=extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(make_bundle(args.out, args.items, args.users, args.max_len, args.hidden, args.seed))


if __name__ == "__main__":
    main()
