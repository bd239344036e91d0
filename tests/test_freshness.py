"""Which warm items the hybrid model trains as stand-ins for new ones."""

import numpy as np
import pytest
import torch

from seqrec.services.trainer.evaluate import model_scorer
from seqrec.services.trainer.freshness import (
    UNSEEN_SHARE_CAP,
    calibrate_exposure,
    expected_unseen_share,
    first_seen,
    newest_items,
    recent_share,
    top_k_share,
)
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.shared.history import encode_histories
from seqrec.shared.scoring import Scorer


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


def test_recent_share_is_what_newest_items_took_since_they_appeared():
    train, times = _train()
    newest = newest_items(train, times, 7, share=0.2)  # item 5, first seen at t=9
    assert recent_share(train, times, newest) == 1.0  # the only event since t=9 is item 5 itself
    newest = newest_items(train, times, 7, share=0.4)  # items 4 (t=8) and 5
    assert recent_share(train, times, newest) == 1.0
    newest = np.zeros(7, dtype=bool)
    newest[3] = True  # item 3 appeared at t=3: since then 3, 3, 4, 5 were consumed
    assert recent_share(train, times, newest) == 0.5


def test_unseen_items_are_expected_to_be_consumed_like_the_newest_ones_per_item():
    assert expected_unseen_share(0.10, n_newest=100, n_unseen=50) == pytest.approx(0.05)
    assert expected_unseen_share(0.10, n_newest=100, n_unseen=150) == pytest.approx(0.15)
    assert expected_unseen_share(0.10, n_newest=100, n_unseen=10_000) == pytest.approx(UNSEEN_SHARE_CAP * 0.10)
    assert expected_unseen_share(0.60, n_newest=10, n_unseen=10_000) == pytest.approx(0.99)
    assert expected_unseen_share(0.10, n_newest=0, n_unseen=50) == 0.0
    assert expected_unseen_share(0.10, n_newest=100, n_unseen=0) == 0.0


def test_exposure_boost_gives_catalog_only_items_their_share_of_the_top_slots():
    torch.manual_seed(0)
    n_items = 40
    text = torch.randn(n_items + 2, 8)
    text[0] = text[-1] = 0.0
    newest = torch.zeros(n_items + 2, dtype=torch.bool)
    newest[25:30] = True
    model = BERT4Rec(ModelConfig(n_indices=n_items + 2, max_len=8, hidden_size=8, heads=2, text_dim=8, content_dim=8),
                     text=text, n_warm=30, newest=newest)  # 31..40 are catalog-only
    with torch.no_grad():
        model.new_bias.fill_(-0.3)  # new items start far below the rest
    histories = [np.random.default_rng(n).integers(1, 31, size=5) for n in range(50)]
    scorer = model_scorer(model)
    assert calibrate_exposure(model, scorer, histories, n_items + 1, target=0.0) == 0.0
    boost = calibrate_exposure(model, scorer, histories, n_items + 1, target=0.4, k=5)
    assert boost > 0
    assert model.new_item[1: n_items + 1].sum() == 15  # new: the 5 newest warm items and the 10 catalog-only ones
    unseen = model.catalog_only[1: n_items + 1].numpy() > 0
    assert unseen.sum() == 10  # the boost goes to the catalog-only ones: the newest warm items have a track record
    # the bundle's rows with that boost give them their share: the calibration searched the contract's own score
    ids = torch.from_numpy(encode_histories(histories, 8, n_items + 1))
    intents = model.eval()(ids).detach().numpy()
    boosted = Scorer.from_parts(model.item_parts().with_exposure(boost)).scores(intents, histories)
    assert top_k_share(boosted, unseen, 5) == pytest.approx(0.4, abs=0.05)
    assert top_k_share(scorer.scores(intents, histories), unseen, 5) < 0.4
