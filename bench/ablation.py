"""Ablation of the score's terms, at scoring time, on the trainer's own test split of a bundle.

    python bench/ablation.py BUNDLE [BUNDLE ...] --out docs/ablation.md

The score (`shared/scoring.py`) is a sum of terms: the encoder's affinity (model columns), content affinity
(content columns, hybrid), factorized transitions (transition columns), item biases (the bias column: id and
text bias, new-item marks, exposure boost), sequential rules and the repeat bias (the sequence prior), and,
in hybrid bundles, the exposure boost of items nobody has interacted with. Each row scores the trainer's
leave-one-out test users (each user's last item from everything before it, as `metrics.json`'s `test`;
"seen excluded" removes every earlier item of the user, as `test_seen_excluded` does)
through the bundle's ONNX encoder and scoring contract with one term removed, or with one term alone.
This measures what each term adds to the trained model as it ships; it does not retrain without it.

Ties (a term alone leaves most items at the same score) are broken uniformly at random, in expectation.
Intervals: 95% paired bootstrap over users (1,000 resamples) of the NDCG@10 difference to the full score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.scoring import ItemParts, Scorer

BOOTSTRAP = 1000
SCORE_BATCH = 256
CUTOFF = 10


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    columns_off: tuple[str, ...] = ()  # intent column groups zeroed: model, content, transition, bias
    transition_weight: bool = True  # the prior's sequential rules kept
    repeat_bias: bool = True  # the prior's repeat bias kept
    exposure: bool = True  # the exposure boost kept (hybrid)


def test_events(bundle: Bundle) -> tuple[list[list[int]], np.ndarray]:
    """The trainer's test split: each user's last item (with at least 3 items) from everything before it."""
    vocab, histories, targets = bundle.vocab(), [], []
    for row in bundle.iter_jsonl(HISTORIES):
        items = vocab.encode(row["items"])[0]
        if len(items) >= 3:
            histories.append(items[:-1])  # the encoder and the prior read its window; exclusion takes all of it
            targets.append(items[-1])
    return histories, np.asarray(targets, dtype=np.int64)


def terms(bundle: Bundle) -> list[str]:
    layout, spec = bundle.manifest.scoring.layout, bundle.manifest.scoring
    out = ["encoder affinity"]
    out += ["content affinity"] if layout.content else []
    out += ["factorized transitions"] if layout.transition else []
    out += ["item biases"]
    out += ["sequential rules"] if spec.prior and spec.prior.transition_weight else []
    out += ["repeat bias"] if spec.prior and spec.prior.repeat_bias else []
    out += ["exposure boost"] if spec.exposure_boost else []
    return out


COLUMN_OF = {"encoder affinity": "model", "content affinity": "content", "factorized transitions": "transition",
             "item biases": "bias"}


def variant(term_set: set[str], name: str) -> Variant:
    """The score with exactly the terms `term_set`."""
    return Variant(name, tuple(col for term, col in COLUMN_OF.items() if term not in term_set),
                   "sequential rules" in term_set, "repeat bias" in term_set, "exposure boost" in term_set)


def scorer_for(bundle: Bundle, v: Variant) -> Scorer:
    shipped = Scorer.from_bundle(bundle)
    prior = shipped.prior
    if prior is not None:
        prior = prior.weighted(prior.transition_weight if v.transition_weight else 0.0,
                               prior.repeat_bias if v.repeat_bias else 0.0)
    if bundle.manifest.scoring.exposure_boost and not v.exposure:
        return Scorer.from_parts(ItemParts.from_bundle(bundle).with_exposure(0.0), prior)
    return shipped.with_prior(prior)


def per_user_ndcg(bundle: Bundle, v: Variant, intents: np.ndarray, histories: list[list[int]], targets: np.ndarray,
                  exclude_seen: bool) -> np.ndarray:
    layout = bundle.manifest.scoring.layout
    cols = {"model": layout.model_cols, "content": layout.content_cols, "transition": layout.transition_cols,
            "bias": slice(layout.bias_col, layout.bias_col + 1)}
    intents = intents.copy()
    for group in v.columns_off:
        intents[:, cols[group]] = 0.0
    scorer = scorer_for(bundle, v)
    out = np.empty(len(targets))
    for start in range(0, len(targets), SCORE_BATCH):
        block = slice(start, start + SCORE_BATCH)
        scores = scorer.scores(intents[block], histories[block])
        rows = np.arange(len(scores))
        cols_t = targets[block] - 1
        target = scores[rows, cols_t].copy()
        if exclude_seen:
            for r, history in enumerate(histories[block]):
                scores[r, np.asarray(history) - 1] = -np.inf
        greater = (scores > target[:, None]).sum(axis=1)
        equal = (scores == target[:, None]).sum(axis=1) + (scores[rows, cols_t] != target)  # the target included
        out[block] = expected_ndcg(greater, equal)
    return out


def expected_ndcg(greater: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """NDCG@10 of a target with `greater` items above it and `equal` items (itself included) tied with it, the
    ties broken uniformly at random: a term alone leaves most items at one score, and counting only the items
    strictly above would rank the target first among all of them."""
    cumulative = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(CUTOFF) + 2.0))])
    top, bottom = np.minimum(greater + equal, CUTOFF), np.minimum(greater, CUTOFF)
    return (cumulative[top] - cumulative[bottom]) / equal


def bootstrap(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def heldout_events(bundle: Bundle, heldout: Path) -> tuple[list[list[int]], np.ndarray]:
    """Each user's whole bundle history and the item held out of the training file after it (`user_id,item_id`
    CSV, bench/served_quality.py): the protocol for bundles whose model has learned every interaction it was
    given (the refit), where the trainer's own test items are no longer unseen. Items the bundle does not know
    cannot be ranked and are left out."""
    vocab = bundle.vocab()
    by_user = {row["user_id"]: vocab.encode(row["items"])[0] for row in bundle.iter_jsonl(HISTORIES)}
    histories, targets = [], []
    for line in heldout.read_text().splitlines()[1:]:
        user, item = line.split(",", 1)
        if user in by_user and by_user[user] and item in vocab:
            histories.append(by_user[user])
            targets.append(vocab.index(item))
    return histories, np.asarray(targets, dtype=np.int64)


def ablate(bundle: Bundle, max_users: int = 0, seed: int = 0, heldout: Path | None = None) -> dict:
    histories, targets = test_events(bundle) if heldout is None else heldout_events(bundle, heldout)
    if max_users and len(targets) > max_users:  # a random sample of test users, the same for every variant
        picks = np.sort(np.random.default_rng(seed).choice(len(targets), size=max_users, replace=False))
        histories, targets = [histories[i] for i in picks], targets[picks]
    encoder = OnnxEncoder(bundle)
    intents = np.concatenate([encoder.intents(histories[s:s + SCORE_BATCH])
                              for s in range(0, len(histories), SCORE_BATCH)])
    present = terms(bundle)
    variants = [variant(set(present), "full score")]
    variants += [variant(set(present) - {t}, f"without {t}") for t in present]
    variants += [variant({t}, f"{t} alone") for t in present]
    rows = []
    for exclude_seen in (True, False):
        full = per_user_ndcg(bundle, variants[0], intents, histories, targets, exclude_seen)
        for v in variants:
            ndcg = full if v is variants[0] else per_user_ndcg(bundle, v, intents, histories, targets, exclude_seen)
            low, high = bootstrap(ndcg - full) if v is not variants[0] else (0.0, 0.0)
            rows.append({"variant": v.name, "seen": "excluded" if exclude_seen else "kept",
                         "ndcg@10": float(ndcg.mean()), "diff": float((ndcg - full).mean()), "ci95": [low, high]})
    protocol = "test users" if heldout is None else "users with an item held out of the training file"
    return {"bundle": str(bundle.path), "users": len(targets), "protocol": protocol, "terms": present, "rows": rows}


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Ablation of the score's terms", "", f"Command: `{command}`", "", __doc__.split("\n\n", 2)[2].strip(),
             ""]
    for r in results:
        lines += [f"## {r['name']}", "", f"Bundle `{Path(r['bundle']).name}`, {r['users']} {r['protocol']}; terms: "
                  f"{', '.join(r['terms'])}.", "",
                  "| variant | NDCG@10 seen excluded | Δ vs full (95% CI) | NDCG@10 seen kept | Δ vs full (95% CI) |",
                  "|---|---|---|---|---|"]
        by = {(row["variant"], row["seen"]): row for row in r["rows"]}
        for name in dict.fromkeys(row["variant"] for row in r["rows"]):
            cells = []
            for seen in ("excluded", "kept"):
                row = by[(name, seen)]
                delta = "" if name == "full score" else \
                    f"{row['diff']:+.4f} ({row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f})"
                cells += [f"{row['ndcg@10']:.4f}", delta]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--names", nargs="+", help="a label per bundle (default: its directory name)")
    parser.add_argument("--out", type=Path, default=Path("docs/ablation.md"))
    parser.add_argument("--max-users", type=int, default=0, help="score a random sample of this many test users "
                        "per bundle (0: all)")
    parser.add_argument("--heldout", nargs="+", type=Path, help="a held-out CSV per bundle (user_id,item_id; "
                        "bench/served_quality.py writes them): score those items instead of the trainer's test split")
    args = parser.parse_args()
    names = args.names or [p.name for p in args.bundles]
    heldouts = args.heldout or [None] * len(args.bundles)
    results = []
    for name, path, heldout in zip(names, args.bundles, heldouts, strict=True):
        result = ablate(Bundle.open(path), args.max_users, heldout=heldout)
        results.append({"name": name, **result})
        print(f"{name}: {result['users']} users, terms {result['terms']}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, "python " + shlex.join(sys.argv)))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
