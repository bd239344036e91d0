"""Training speed next to RecBole 1.2.1's BERT4Rec on the same data, split and model size.

    # 1. the peer (its venv and data as in ../shared/bench/peers/README.md), with a validation curve
    $PEERS/venv-recbole/bin/python ../shared/bench/peers/run_recbole.py --data $PEERS/data/mlsmall5.csv \
        --max-len 200 --epochs 6 --eval-every 1 --json-out /tmp/recbole.jsonl
    # 2. seqrec on the same file and max length (bench/train_quality.py or seqrec train)
    # 3. the comparison
    python bench/peer_speed.py --recbole /tmp/recbole.jsonl --bundle BUNDLE --data $PEERS/data/mlsmall5.csv \
        --out docs/peer_speed.md

Reports, for each: the best validation NDCG@10 and when it was reached, the wall time seqrec needs to
reach RecBole's best validation NDCG@10, and item positions processed per second (RecBole trains on
every prefix of a history, seqrec on windows of it; a position is one item slot in a training input).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def recbole_positions_per_epoch(data: Path, max_len: int) -> int:
    """Sum over users of the lengths of RecBole's training prefixes (item_id_list, capped at max_len)."""
    frame = pd.read_csv(data)
    lengths = frame.groupby("user_id").size().to_numpy() - 2  # leave-one-out: training part
    total = 0
    for n in lengths:
        total += sum(min(i, max_len) for i in range(1, max(int(n), 1)))
    return total


def time_to_reach(history: list[dict], target: float) -> float | None:
    """Cumulative training seconds at the first validation at or above `target`."""
    elapsed = 0.0
    for record in history:
        elapsed += record["seconds"]
        if record["valid"] and record["valid"].get("ndcg@10", 0.0) >= target:
            return elapsed
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recbole", type=Path, required=True, help="run_recbole.py JSON line(s); the last is used")
    parser.add_argument("--bundle", type=Path, required=True, help="seqrec bundle trained on the same data")
    parser.add_argument("--data", type=Path, required=True, help="the peers' user_id,item_id,timestamp CSV")
    parser.add_argument("--out", type=Path, default=Path("docs/peer_speed.md"))
    args = parser.parse_args()

    peer = json.loads(args.recbole.read_text().strip().splitlines()[-1])
    max_len = peer["hparams"]["max_len"]
    curve = peer.get("curve") or []
    best_peer = max(curve, key=lambda c: c["val_ndcg@10"])
    peer_positions = recbole_positions_per_epoch(args.data, max_len)
    peer_epoch_s = peer["median_epoch_seconds"]

    history = json.loads((args.bundle / "training_history.json").read_text())
    metrics = json.loads((args.bundle / "metrics.json").read_text())
    evaluated = [r for r in history if r["valid"]]
    best_ours = max(evaluated, key=lambda r: r["valid"]["ndcg@10"])
    ours_reach = time_to_reach(history, best_peer["val_ndcg@10"])  # the encoder's validation curve: no prior
    encoder_test = (metrics.get("sequence_prior") or {}).get("test_encoder_only", metrics["test"])["ndcg@10"]
    ours_positions_s = sorted(r["positions_per_s"] for r in history)[len(history) // 2]
    peer_positions_s = peer_positions / peer_epoch_s

    speedup = "n/a" if ours_reach is None else f"{best_peer['train_seconds'] / ours_reach:.1f}x"
    reach = "not reached" if ours_reach is None else f"{ours_reach:.0f} s"
    lines = [
        "# Training speed next to RecBole 1.2.1 BERT4Rec", "",
        f"Same data ({args.data.name}), split (leave-one-out), metric code and model size "
        f"(hidden {peer['hparams']['hidden']}, {peer['hparams']['layers']} layers, {peer['hparams']['heads']} heads, "
        f"max length {max_len}), 2 CPU threads each, run one after the other on this machine.", "",
        "| | best valid NDCG@10 | reached after | test NDCG@10 (encoder alone) | item positions / s | median epoch |",
        "|---|---|---|---|---|---|",
        f"| RecBole BERT4Rec | {best_peer['val_ndcg@10']:.4f} | {best_peer['train_seconds']:.0f} s "
        f"(epoch {best_peer['epoch']} of {peer['epochs']}) | {peer['ndcg@10']:.4f} | {peer_positions_s:,.0f} | "
        f"{peer_epoch_s:.0f} s |",
        f"| seqrec | {best_ours['valid']['ndcg@10']:.4f} | "
        f"{sum(r['seconds'] for r in history if r['epoch'] <= best_ours['epoch']):.0f} s (epoch {best_ours['epoch']}) "
        f"| {encoder_test:.4f} (with its sequence prior {metrics['test']['ndcg@10']:.4f}) | {ours_positions_s:,.0f} | "
        f"{sorted(r['seconds'] for r in history)[len(history) // 2]:.1f} s |",
        "",
        f"seqrec reaches RecBole's best validation NDCG@10 ({best_peer['val_ndcg@10']:.4f}) after {reach} of "
        f"training: {speedup} faster in wall time. Positions per second: "
        f"{ours_positions_s / peer_positions_s:.1f}x.", "",
        f"RecBole positions per epoch: {peer_positions:,} (every training prefix, capped at max length), "
        "computed from the data; seqrec's from its own epoch records.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
