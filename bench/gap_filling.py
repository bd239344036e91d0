"""Gap filling against next-item scoring and Markov chains: remove one middle item per user from the training
file (so it is never trained on), train with `seqrec train`, then rank the removed item over the full catalogue.

    python bench/gap_filling.py --datasets ml beauty --time-budget 10 --out docs/gap_filling.md

Per user (at least 3 interactions), one item strictly inside the history is removed, drawn with a fixed seed.
Its two neighbours stay in the file. Rows, all with the items around the gap excluded (as the gap query does by
default) and the removed item ranked among every catalogue item:

* gap query: the served gap path (`OnnxEncoder.intents(before, following=after)` through the scoring contract,
  whose prior reads the transition counts from both sides of the gap), what `GapFill` answers;
* two ablations of it: without the counts into the item after (the prior reads the item before only), and the
  encoder alone (no count terms);
* next item of the prefix: the same bundle asked what follows the items before the gap (`sequential`);
* Markov chain from the item before: how often an item followed it in the training file, ties by popularity;
* two-sided Markov chain (reference): count(item before → i) + count(i → item after), ties by popularity.

Intervals: 95% paired bootstrap over users of the NDCG@10 difference between the gap query and each row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.metrics import ranking_metrics, target_ranks
from seqrec.shared.scoring import Scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import bootstrap  # noqa: E402
from served_quality import SETTINGS, _run, load_interactions  # noqa: E402

from seqrec.shared.markov import MarkovChain  # noqa: E402

BLOCK_USERS = 1024
ROWS = ("gap query", "gap query without the transitions into the item after", "gap query, encoder alone",
        "next item of the prefix", "Markov from the item before", "two-sided Markov (reference)")


def prepare(name: str, scratch: Path, seed: int) -> tuple[Path, pd.DataFrame]:
    """train.csv without one inner item per user, and the removed items (user_id, item_id, position: its index in
    the user's time-ordered history, which is also where the gap sits in the training history)."""
    scratch.mkdir(parents=True, exist_ok=True)
    frame = load_interactions(name)
    order = frame.assign(row=np.arange(len(frame))).sort_values(["user_id", "timestamp", "row"], kind="stable")
    order["position"] = order.groupby("user_id", sort=False).cumcount()
    length = order.groupby("user_id", sort=False)["position"].transform("size")
    rng = np.random.default_rng(seed)
    users = order.loc[length >= 3, ["user_id"]].drop_duplicates()
    sizes = length[users.index].to_numpy()
    chosen = users.assign(position=rng.integers(1, sizes - 1))  # strictly inside: both neighbours stay
    removed = order.merge(chosen, on=["user_id", "position"])
    train = frame.drop(index=removed["row"].to_numpy())
    path = scratch / f"{name}_gap_train.csv"
    train.to_csv(path, index=False)
    return path, removed[["user_id", "item_id", "position"]]


def gap_cases(bundle: Bundle, removed: pd.DataFrame) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
    """(items before the gap, items after it, removed item index) for every user whose removed item the bundle
    knows (an item seen only at the removed position cannot be ranked: it is not in the catalogue)."""
    vocab = bundle.vocab()
    histories = {row["user_id"]: row["items"] for row in bundle.iter_jsonl(HISTORIES)}
    before, after, targets = [], [], []
    for user, item, position in removed.itertuples(index=False):
        if item not in vocab or user not in histories:
            continue
        history = histories[user]
        before.append(vocab.encode(history[:position])[0])
        after.append(vocab.encode(history[position:])[0])
        targets.append(vocab.index(item))
    return before, after, np.asarray(targets, dtype=np.int64)


def _rank(scores: np.ndarray, context: list[list[int]], targets: np.ndarray) -> np.ndarray:
    """Full-catalogue ranks of the targets (item index - 1 = column), the context items excluded."""
    for row, items in enumerate(context):
        seen = np.asarray([i for i in items if i != targets[row]], dtype=np.int64)
        scores[row, seen - 1] = -np.inf
    return target_ranks(scores, targets - 1)


def model_ranks(bundle: Bundle, before: list[list[int]], after: list[list[int]], targets: np.ndarray,
                gap: bool, prior: str = "served") -> np.ndarray:
    """The bundle's score through the scoring contract: the gap row (gap) or the prefix's next-item row; `prior`
    "served" (the bundle's), "forward" (no counts into the item after) or "none" (the encoder alone)."""
    encoder = OnnxEncoder(bundle)
    scorer = Scorer.from_bundle(bundle)
    if prior == "none":
        scorer = scorer.with_prior(None)
    elif prior == "forward" and scorer.prior is not None:
        empty = dataclasses.replace(scorer.prior, pred_indptr=np.zeros_like(scorer.prior.pred_indptr),
                                    predecessors=np.zeros(0, np.int64), pred_log_counts=np.zeros(0, np.float32))
        scorer = scorer.with_prior(empty)
    ranks = []
    for start in range(0, len(before), BLOCK_USERS):
        block = slice(start, start + BLOCK_USERS)
        intents = encoder.intents(before[block], after[block] if gap else None)
        scores = scorer.scores(intents, before[block], after[block] if gap else None)
        context = [b + a for b, a in zip(before[block], after[block], strict=True)]
        ranks.append(_rank(scores, context, targets[block]))
    return np.concatenate(ranks)


def markov_ranks(bundle: Bundle, before: list[list[int]], after: list[list[int]], targets: np.ndarray,
                 two_sided: bool) -> np.ndarray:
    """The Markov chain over the training histories from the item before the gap (and, two-sided, into the item
    after it)."""
    vocab = bundle.vocab()
    chain = MarkovChain([np.asarray(vocab.encode(row["items"])[0], dtype=np.int64)
                         for row in bundle.iter_jsonl(HISTORIES)], bundle.manifest.n_items)
    ranks = []
    for start in range(0, len(before), BLOCK_USERS):
        block = slice(start, start + BLOCK_USERS)
        previous = [b[-1] if b else 0 for b in before[block]]
        following = [a[0] if a else 0 for a in after[block]] if two_sided else None
        context = [b + a for b, a in zip(before[block], after[block], strict=True)]
        ranks.append(_rank(chain.scores(previous, following), context, targets[block]))
    return np.concatenate(ranks)


def _ndcg(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def run(name: str, seed: int, budget: float, scratch: Path) -> dict:
    data, removed = prepare(name, scratch, seed)
    settings = SETTINGS[name]
    out = scratch / f"{name}_gap_{seed}"
    argv = ["seqrec", "train", "--data", str(data), "--user-col", "user_id", "--item-col", "item_id",
            "--time-col", "timestamp", "--preset", "accuracy", "--max-len", str(settings["max_len"]),
            "--epochs", "1000", "--patience", str(settings["patience"]), "--time-budget", str(budget),
            "--seed", str(seed), "--out", str(out / "bundles"), "--no-progress"]
    started = time.perf_counter()
    bundle_path = Path(json.loads(_run(argv, scratch / f"{name}_gap_{seed}.log").strip().splitlines()[-1])["bundle"])
    train_wall = time.perf_counter() - started
    bundle = Bundle.open(bundle_path)
    before, after, targets = gap_cases(bundle, removed)
    ranks = {ROWS[0]: model_ranks(bundle, before, after, targets, gap=True),
             ROWS[1]: model_ranks(bundle, before, after, targets, gap=True, prior="forward"),
             ROWS[2]: model_ranks(bundle, before, after, targets, gap=True, prior="none"),
             ROWS[3]: model_ranks(bundle, before, after, targets, gap=False),
             ROWS[4]: markov_ranks(bundle, before, after, targets, two_sided=False),
             ROWS[5]: markov_ranks(bundle, before, after, targets, two_sided=True)}
    gap_ndcg = _ndcg(ranks[ROWS[0]])
    rows = []
    for label, r in ranks.items():
        metrics = ranking_metrics(r, cutoffs=(10,))
        low, high = (0.0, 0.0) if label == ROWS[0] else bootstrap(gap_ndcg - _ndcg(r))
        rows.append({"row": label, "hr@10": metrics["hr@10"], "ndcg@10": metrics["ndcg@10"],
                     "gap_minus_row_ci95": [low, high]})
    result = {"dataset": name, "seed": seed, "users": len(targets), "removed": len(removed),
              "train_command": shlex.join(argv), "train_wall_seconds": round(train_wall, 1),
              "bundle": str(bundle_path), "rows": rows}
    print(json.dumps(result), flush=True)
    return result


def report(results: list[dict], command: str) -> str:
    lines = ["# Gap filling: the bidirectional model read from both sides of a gap", "",
             "Produced by `bench/gap_filling.py`; regenerate with:", "", f"    {command}", "",
             "Protocol: one item strictly inside each user's history (3 or more interactions) is removed from the "
             "training file, drawn with the seed; `seqrec train` (the `accuracy` preset) trains on the rest, so the "
             "removed item is never trained on. The removed item is then ranked over the full catalogue with the "
             "items around the gap excluded. `gap query` is what the `gap` query type serves (the encoder answers "
             "at the [MASK] between the two sides, plus the transition counts from the item before and into the "
             "item after, scored by the scoring contract); the next two rows remove parts of that score, the "
             "others know less (the items before the gap) or are count baselines. Users whose removed item "
             "appears nowhere else in the file cannot be ranked (the item is not in the catalogue) and are left "
             "out.", "",
             "Intervals: 95% paired bootstrap over users of the gap query's NDCG@10 minus the row's.", ""]
    for result in results:
        lines += [f"## {result['dataset']} (seed {result['seed']}, {result['users']} users ranked of "
                  f"{result['removed']} with a removed item; training {result['train_wall_seconds']:.0f} s)", "",
                  f"`{result['train_command']}`", "",
                  "| row | HR@10 | NDCG@10 | gap − row NDCG@10 (95% CI) |", "|---|---|---|---|"]
        for row in result["rows"]:
            low, high = row["gap_minus_row_ci95"]
            ci = "—" if row["row"] == ROWS[0] else f"[{low:+.4f}, {high:+.4f}]"
            lines.append(f"| {row['row']} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | {ci} |")
        lines += ["", _finding(result), ""]
    lines += ["Reading the table: the two ablation rows say what each part of the served gap score brings (the "
              "counts into the item after, then the count terms as a whole); `next item of the prefix` is what every "
              "other query type could answer; the two-sided Markov chain is the count-only reference that reads "
              "both neighbours too.", ""]
    return "\n".join(lines)


def _finding(result: dict) -> str:
    """One sentence per dataset: the gap query against the rows the issue names, with their intervals."""
    rows = {row["row"]: row for row in result["rows"]}
    parts = []
    for label in (ROWS[3], ROWS[4], ROWS[5]):
        low, high = rows[label]["gap_minus_row_ci95"]
        delta = rows[ROWS[0]]["ndcg@10"] - rows[label]["ndcg@10"]
        parts.append(f"{delta:+.4f} [{low:+.4f}, {high:+.4f}] against {label}")
    return f"Gap query NDCG@10: {'; '.join(parts)}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml", "beauty"], choices=sorted(SETTINGS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=10.0, help="training minutes per dataset")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/seqrec-gap"))
    parser.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    args = parser.parse_args()
    results = [run(name, args.seed, args.time_budget, args.scratch) for name in args.datasets]
    if args.out is not None:
        command = shlex.join(["python", "bench/gap_filling.py", *sys.argv[1:]])
        args.out.write_text(report(results, command) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
