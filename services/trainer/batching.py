"""Length-bucketed batches: windows of similar length share a batch, trimmed to its longest row.

Rows are left-padded and positions count back from the last slot, so cutting leading padding
changes nothing in the model's output; it only skips work on padding.
"""

from __future__ import annotations

import numpy as np

BUCKET_BATCHES = 50  # batches drawn from one sorted pool: shuffled enough, similar lengths inside


def window_lengths(windows: np.ndarray) -> np.ndarray:
    return (windows != 0).sum(axis=1)


def batch_plan(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Shuffled (row indices, width) batches; each batch is as wide as its longest row."""
    order = rng.permutation(len(lengths))
    pool = batch_size * BUCKET_BATCHES
    batches: list[tuple[np.ndarray, int]] = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        for b in range(0, len(chunk), batch_size):
            rows = chunk[b:b + batch_size]
            batches.append((rows, int(lengths[rows].max())))
    return [batches[i] for i in rng.permutation(len(batches))]
