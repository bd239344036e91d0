"""The one function that turns histories into the encoder's input.

Training evaluation and online serving both call `encode_histories`, so the [MASK] slot, the
truncation and the padding can never differ between them.

Layout of a row (length L <= max_len): the most recent L - 1 history items, oldest first,
then `mask_index`; shorter rows are left-padded with `PAD_INDEX`. The encoder gives the last
position of every row the same positional embedding whatever L is, so a row padded to the batch's
longest history scores exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqrec.shared.vocab import PAD_INDEX


def history_window(history: Sequence[int], keep: int) -> Sequence[int]:
    """The last `keep` items of a history (oldest first): what the encoder reads, `keep` = max_len - 1."""
    return history[max(len(history) - keep, 0):]


def encode_histories(
    histories: Sequence[Sequence[int]],
    max_len: int,
    mask_index: int,
    pad_to: int | None = None,
) -> np.ndarray:
    """Encode item-index histories (oldest first) as an int64 [batch, length] array.

    Each history keeps its last `max_len - 1` items and gets `mask_index` appended. The batch is
    as wide as its longest row, or `pad_to` when given (at most `max_len`).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    rows = [list(history_window(h, max_len - 1)) for h in histories]
    width = max((len(r) for r in rows), default=0) + 1
    if pad_to is not None:
        if not width <= pad_to <= max_len:
            raise ValueError(f"pad_to={pad_to} must be between {width} and max_len={max_len}")
        width = pad_to
    out = np.full((len(rows), width), PAD_INDEX, dtype=np.int64)
    for r, items in enumerate(rows):
        out[r, width - 1] = mask_index
        if items:
            out[r, width - 1 - len(items) : width - 1] = items
    return out
