"""First-order Markov chain baseline on a bundle's own split: a reference point for the trained model.

The next item is ranked by how often it followed the user's last item in the training prefixes (each
user's history without its validation and test items, what the model trained on), ties broken by
training popularity. Test = each user's last item from everything before it, ranked over the full
catalog, with seen items kept and excluded, exactly as the trainer evaluates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from seqrec.shared.bundle import Bundle
from seqrec.shared.metrics import ranking_metrics, target_ranks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seqrec.shared.markov import MarkovChain  # noqa: E402

BLOCK_CELLS = 50_000_000  # users × items scored at once


def _sequences(bundle: Bundle) -> list[np.ndarray]:
    """Every user's full history as 0-based item columns (the bundle's vocabulary order)."""
    vocab = bundle.vocab()
    return [np.asarray(vocab.encode(json.loads(line)["items"])[0], dtype=np.int64) - 1
            for line in (bundle.path / "histories.jsonl").read_text().splitlines()]


def markov_test_metrics(path: Path) -> dict[str, dict[str, float]]:
    """Test metrics of the Markov chain, seen items kept (`test`) and excluded (`test_seen_excluded`)."""
    bundle = Bundle.open(path)
    n_items = bundle.manifest.n_items
    sequences = [seq for seq in _sequences(bundle) if len(seq) >= 3]
    train = [seq[:-2] for seq in sequences]
    chain = MarkovChain([seq + 1 for seq in train], n_items)  # item index = column + 1
    block = max(1, BLOCK_CELLS // n_items)
    kept, excluded = [], []
    for start in range(0, len(sequences), block):
        users = sequences[start:start + block]
        scores = chain.scores([int(seq[-2]) + 1 for seq in users])
        targets = np.array([seq[-1] for seq in users])
        kept.append(target_ranks(scores, targets))
        for row, seq in enumerate(users):
            seen = seq[:-1][seq[:-1] != targets[row]]
            scores[row, seen] = -np.inf
        excluded.append(target_ranks(scores, targets))
    return {"test": ranking_metrics(np.concatenate(kept)),
            "test_seen_excluded": ranking_metrics(np.concatenate(excluded))}
