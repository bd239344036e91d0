"""Which warm items the hybrid model trains as stand-ins for new ones."""

import numpy as np

from seqrec.services.trainer.freshness import first_seen, newest_items


def _train():
    # items 1..5; item 5 first appears at t=9, item 4 at t=8, item 3 at t=3 (twice: the earliest counts)
    train = [np.array([1, 2, 3]), np.array([3, 4, 5]), np.array([1])]
    times = [np.array([0.0, 1.0, 3.0]), np.array([7.0, 8.0, 9.0]), np.array([2.0])]
    return train, times


def test_first_seen_is_the_earliest_training_interaction():
    first = first_seen(*_train(), n_indices=7)
    np.testing.assert_array_equal(first[1:6], [0.0, 1.0, 3.0, 8.0, 9.0])
    assert np.isinf(first[0]) and np.isinf(first[6])  # padding, and an index never trained on


def test_newest_share_picks_the_items_introduced_last():
    train, times = _train()
    assert newest_items(train, times, 7, share=0.2).nonzero()[0].tolist() == [5]
    assert newest_items(train, times, 7, share=0.4).nonzero()[0].tolist() == [4, 5]
    assert not newest_items(train, times, 7, share=0.05).any()  # rounds to no item


def test_timestamps_beyond_the_training_prefix_are_ignored():
    train = [np.array([1, 2])]  # validation and test items follow in the full sequence
    times = [np.array([5.0, 6.0, 7.0, 8.0])]
    np.testing.assert_array_equal(first_seen(train, times, 4)[1:3], [5.0, 6.0])


def test_ties_at_the_boundary_are_all_newest():
    train = [np.array([1, 2, 3, 4])]
    times = [np.array([0.0, 5.0, 5.0, 5.0])]
    assert newest_items(train, times, 6, share=0.25).nonzero()[0].tolist() == [2, 3, 4]
