"""The sequence prior alone, over a grid of its two settings: how far ahead a pair counts (`reach`) and how many of
the newest history items vote (`anchors`). reach 1 with one anchor is the first-order Markov chain.

    python bench/sequence_rules.py --datasets ml beauty --out docs/sequence_rules.md

Both splits of `bench/served_quality.py`'s files, seen items excluded, full catalogue, ties by popularity:
- validation: each user's last item of the training file, ranked from the items before it, with the rules counted
  over the training file without those items (what the product may choose settings on);
- served test: the item held out of the file, ranked from the whole training file, with the rules counted over all
  of it (what a user gets; read, never chosen on).
The counts go through the product's own `SequencePrior` (256 successors kept per item, as bundles keep them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served_quality import prepare, rule_ranks  # noqa: E402

from seqrec.shared.metrics import ranking_metrics  # noqa: E402
from seqrec.shared.sequence_prior import RULE_ANCHORS, RULE_REACH, SequencePrior  # noqa: E402

GRID = ((1, 1), (3, 1), (10, 1), (1, 10), (3, 3), (5, 5), (5, 10), (10, 5), (10, 10), (20, 10))
MAX_USERS = 6000  # users scored per dataset (a random sample above this)


def user_sequences(name: str, scratch: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Each user's training-file items (indices from 1, time order, ties in file order) and held-out item index
    (0: not in the training file)."""
    path, heldout = prepare(name, scratch)
    train = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    train = train.assign(row=np.arange(len(train))).sort_values(["user_id", "timestamp", "row"], kind="stable")
    items = pd.Index(sorted(train["item_id"].unique()))
    by_user = {user: items.get_indexer(group["item_id"]) + 1 for user, group in train.groupby("user_id", sort=False)}
    users = heldout["user_id"].tolist()
    targets = np.array([items.get_loc(item) + 1 if item in items else 0 for item in heldout["item_id"]])
    return [by_user[user] for user in users], targets


def counted_rule_ranks(counted: list[np.ndarray], histories: list[np.ndarray], targets: np.ndarray, n_items: int,
                       reach: int, anchors: int) -> np.ndarray:
    """Ranks of the targets by the rules over `counted` alone (weight 1, no repeat bias), seen items excluded."""
    prior = SequencePrior.from_sequences(counted, n_items + 2, 1 << 20, reach=reach, anchors=anchors).weighted(1, 0)
    popularity = np.bincount(np.concatenate(counted), minlength=n_items + 1)[1:].astype(np.float64)
    return rule_ranks(prior, histories, targets, popularity)


def measure(name: str, scratch: Path, seed: int = 0) -> list[dict]:
    sequences, targets = user_sequences(name, scratch)
    picks = np.arange(len(sequences))
    if len(picks) > MAX_USERS:
        picks = np.sort(np.random.default_rng(seed).choice(len(picks), MAX_USERS, replace=False))
    n_items = int(max(seq.max() for seq in sequences))
    valid_counted = [seq[:-1] for seq in sequences]
    rows = []
    for reach, anchors in GRID:
        valid = counted_rule_ranks(valid_counted, [sequences[i][:-1] for i in picks],
                           np.array([sequences[i][-1] for i in picks]), n_items, reach, anchors)
        test = counted_rule_ranks(sequences, [sequences[i] for i in picks], targets[picks], n_items, reach, anchors)
        rows.append({"dataset": name, "reach": reach, "anchors": anchors, "users": len(picks),
                     "valid_ndcg@10": ranking_metrics(valid, cutoffs=(10,))["ndcg@10"],
                     "test_ndcg@10": ranking_metrics(test, cutoffs=(10,))["ndcg@10"],
                     "test_hr@10": ranking_metrics(test, cutoffs=(10,))["hr@10"]})
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Sequential rules alone", "", f"Command: `{command}`", "", __doc__.split("\n\n", 2)[2].strip(), "",
             f"The product's settings: reach {RULE_REACH}, anchors {RULE_ANCHORS} (`shared/sequence_prior.py`).", "",
             "| dataset | reach | anchors | users | validation NDCG@10 | served test NDCG@10 | served test HR@10 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (shipped)" if (r["reach"], r["anchors"]) == (RULE_REACH, RULE_ANCHORS) else \
            " (Markov chain)" if (r["reach"], r["anchors"]) == (1, 1) else ""
        lines.append(f"| {r['dataset']} | {r['reach']} | {r['anchors']}{mark} | {r['users']} "
                     f"| {r['valid_ndcg@10']:.4f} | {r['test_ndcg@10']:.4f} | {r['test_hr@10']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml", "beauty"], choices=["ml", "beauty"])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/seqrec-served"))
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()
    rows = [row for name in args.datasets for row in measure(name, args.scratch)]
    if args.out:
        args.out.write_text(markdown(rows, "python bench/sequence_rules.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
