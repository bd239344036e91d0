"""The one function that turns histories into the encoder's input.

Training evaluation and online serving both call `encode_histories`, so the [MASK] slot, the
truncation and the padding can never differ between them.

Layout of a row (length L <= max_len): the most recent L - 1 history items, oldest first,
then `mask_index`; shorter rows are left-padded with `PAD_INDEX`. The encoder gives the last
position of every row the same positional embedding whatever L is, so a row padded to the batch's
longest history scores exactly as it would alone.

A gap row (gap filling) holds the items before the gap, `mask_index`, then the items after it; the
encoder answers at the [MASK] slot wherever it is. Slots count back from the end of the row, so the
row's positions mean what they meant in training, where Cloze masks sit anywhere in a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from seqrec.shared.vocab import PAD_INDEX

T = TypeVar("T")


def history_window(history: Sequence[int], keep: int) -> Sequence[int]:
    """The last `keep` items of a history (oldest first): what the encoder reads, `keep` = max_len - 1."""
    return history[max(len(history) - keep, 0):]


def gap_window(before: Sequence[int], after: Sequence[int], keep: int) -> tuple[Sequence[int], Sequence[int]]:
    """The context of a gap that fits in `keep` items: the items nearest the gap, split evenly between the two
    sides, a short side's unused share going to the other."""
    n_after = min(len(after), max(keep - len(before), keep // 2))
    n_before = min(len(before), keep - n_after)
    return history_window(before, n_before), after[:n_after]


def split_at_gap(sequence: Sequence[T], gap_position: int, what: str) -> tuple[Sequence[T], Sequence[T]]:
    """(the items before the gap, the items from it on) of a sequence with a gap before index `gap_position`;
    ValueError naming `gap_position` (and `what` the sequence is) when the position is outside it."""
    if not 0 <= gap_position <= len(sequence):
        raise ValueError(f"gap_position: must be between 0 and {len(sequence)} ({what}), got {gap_position}")
    return sequence[:gap_position], sequence[gap_position:]


def encode_histories(
    histories: Sequence[Sequence[int]],
    max_len: int,
    mask_index: int,
    pad_to: int | None = None,
    following: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Encode item-index histories (oldest first) as an int64 [batch, length] array.

    Each history keeps its last `max_len - 1` items and gets `mask_index` appended. With `following`
    (one item list per history) each row is a gap: the items before it, `mask_index`, the items after it,
    truncated by `gap_window`. The batch is as wide as its longest row, or `pad_to` when given (at most
    `max_len`).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    if following is None:
        rows = [[*history_window(h, max_len - 1), mask_index] for h in histories]
    else:
        if len(following) != len(histories):
            raise ValueError(f"following: {len(following)} item lists for {len(histories)} histories")
        rows = []
        for before, after in zip(histories, following, strict=True):
            kept_before, kept_after = gap_window(before, after, max_len - 1)
            rows.append([*kept_before, mask_index, *kept_after])
    width = max((len(r) for r in rows), default=1)
    if pad_to is not None:
        if not width <= pad_to <= max_len:
            raise ValueError(f"pad_to={pad_to} must be between {width} and max_len={max_len}")
        width = pad_to
    out = np.full((len(rows), width), PAD_INDEX, dtype=np.int64)
    for r, items in enumerate(rows):
        out[r, width - len(items):] = items
    return out
