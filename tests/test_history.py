"""The one history encoder shared by training evaluation and serving."""

import numpy as np
import pytest

from seqrec.shared.history import encode_histories
from seqrec.shared.vocab import PAD_INDEX

MASK = 99


def test_mask_is_last_and_rows_are_left_padded():
    out = encode_histories([[1, 2, 3], [4]], max_len=10, mask_index=MASK)
    assert out.dtype == np.int64
    assert out.tolist() == [[1, 2, 3, MASK], [PAD_INDEX, PAD_INDEX, 4, MASK]]


def test_truncation_keeps_the_most_recent_items():
    out = encode_histories([list(range(1, 21))], max_len=5, mask_index=MASK)
    assert out.tolist() == [[17, 18, 19, 20, MASK]]


def test_empty_history_is_only_the_mask():
    assert encode_histories([[]], max_len=5, mask_index=MASK).tolist() == [[MASK]]


def test_pad_to_full_width():
    out = encode_histories([[7, 8]], max_len=6, mask_index=MASK, pad_to=6)
    assert out.tolist() == [[0, 0, 0, 7, 8, MASK]]


def test_accepts_numpy_histories():
    out = encode_histories([np.array([3, 4], dtype=np.int64)], max_len=4, mask_index=MASK)
    assert out.tolist() == [[3, 4, MASK]]


@pytest.mark.parametrize("pad_to", [2, 7])
def test_bad_pad_to(pad_to):
    with pytest.raises(ValueError):
        encode_histories([[1, 2]], max_len=6, mask_index=MASK, pad_to=pad_to)


def test_max_len_below_two_rejected():
    with pytest.raises(ValueError):
        encode_histories([[1]], max_len=1, mask_index=MASK)
