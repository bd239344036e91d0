"""The count-based sequence prior and the scoring contract around it: counts, terms, dense scores, the serving
merge and the exact top-k (both against brute force), and the prior's fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.services.trainer.evaluate import model_scorer
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.prior_fit import fit_sequence_prior, one_standard_error_choice
from seqrec.services.trainer.split import leave_one_out
from seqrec.shared.manifest import Layout, ScoringSpec
from seqrec.shared.markov import MarkovChain
from seqrec.shared.scoring import Scorer
from seqrec.shared.sequence_prior import SequencePrior


def _prior(sequences, n_indices=8, window=3, max_successors=256, weight=1.0, bias=0.0, reach=1,
           anchors=1) -> SequencePrior:
    """A prior over `sequences`; first-order (reach 1, one anchor) unless asked, so counts are easy to check."""
    seqs = [np.array(s, dtype=np.int64) for s in sequences]
    return SequencePrior.from_sequences(seqs, n_indices, window, max_successors, reach, anchors).weighted(weight, bias)


def test_rules_count_later_items_within_reach_at_one_over_their_distance():
    prior = _prior([[1, 2, 3, 4], [1, 3]], reach=2)
    start, stop = prior.indptr[1], prior.indptr[2]
    assert prior.successors[start:stop].tolist() == [3, 2]  # 1→3: 1/2 + 1, 1→2: 1; 1→4 is 3 steps away
    assert prior.log_counts[start:stop] == pytest.approx(np.log1p([1.5, 1.0]))
    back = prior.pred_indptr[4], prior.pred_indptr[5]
    assert prior.predecessors[back[0]:back[1]].tolist() == [3, 2]  # 4 came 1 step after 3, 2 steps after 2
    assert prior.pred_log_counts[back[0]:back[1]] == pytest.approx(np.log1p([1.0, 0.5]))


def test_the_newest_anchors_vote_the_kth_newest_weighing_one_over_k():
    prior = _prior([[1, 5], [2, 6], [3, 7], [2, 5]], window=8, weight=2.0, anchors=2)
    got = _as_dict(prior.terms([3, 1, 2]))  # anchors: 2 (newest), then 1; 3 is beyond the two anchors
    assert got == pytest.approx({1: 0.0, 2: 0.0, 3: 0.0, 6: 2 * np.log(2), 5: 2 * (np.log(2) + np.log(2) / 2)})
    gap = _as_dict(prior.terms([3], [5, 7]))  # 3 votes forwards; after the gap 5, then 7 (weighing 1/2), backwards
    assert gap == pytest.approx({3: np.log(2), 5: 0.0, 7: 2 * np.log(2), 1: 2 * np.log(2), 2: 2 * np.log(2)})


def test_markov_chain_stays_first_order():
    chain = MarkovChain([np.array([1, 2, 3]), np.array([1, 3])], 3)
    # 1→2 and 1→3 once each (3 is also two steps after 1: not counted); popularity adds less than one
    assert np.floor(chain.scores([1])[0]).tolist() == [0.0, 1.0, 1.0]


def test_counts_most_frequent_successors_first_and_truncated():
    prior = _prior([[1, 2, 1, 3, 1, 3], [1, 4, 2, 5]], max_successors=2)
    start, stop = prior.indptr[1], prior.indptr[2]
    assert prior.successors[start:stop].tolist() == [3, 2]  # 1→3 twice; 1→2 and 1→4 once: the lower index
    assert prior.log_counts[start:stop] == pytest.approx(np.log1p([2, 1]))
    assert prior.successors[prior.indptr[2]:prior.indptr[3]].tolist() == [1, 5]
    assert prior.indptr[7] == prior.indptr[8] == len(prior.successors)  # items that lead nowhere


def _as_dict(terms: tuple[np.ndarray, np.ndarray]) -> dict[int, float]:
    return dict(zip(terms[0].tolist(), terms[1].tolist(), strict=True))


def test_predecessors_are_the_counts_read_backwards():
    prior = _prior([[1, 2, 1, 3, 1, 3], [1, 4, 2, 5]], max_successors=2)
    start, stop = prior.pred_indptr[3], prior.pred_indptr[4]
    assert prior.predecessors[start:stop].tolist() == [1]  # 3 always came after 1 (twice)
    assert prior.pred_log_counts[start:stop] == pytest.approx(np.log1p([2]))
    assert prior.predecessors[prior.pred_indptr[2]:prior.pred_indptr[3]].tolist() == [1, 4]
    assert prior.predecessors[prior.pred_indptr[1]:prior.pred_indptr[2]].tolist() == [2, 3]  # 1←3 once, 1←2 once


def test_a_gap_reads_the_counts_from_both_sides_and_its_window_is_the_gaps():
    prior = _prior([[1, 2, 7], [1, 3, 7], [1, 3, 6], [4, 7]], window=4, weight=2.0, bias=-5.0)
    got = _as_dict(prior.terms([5, 1], [7, 6]))  # 1 leads to 3 (x2), 2 (x1); 7 follows 2, 3, 4 (x1 each)
    assert got == pytest.approx({1: -5.0, 2: 2 * (np.log(2) + np.log(2)), 3: 2 * (np.log(3) + np.log(2)),
                                 4: 2 * np.log(2), 5: -5.0, 6: -5.0, 7: -5.0})
    assert _as_dict(prior.terms([5, 1], [])) == pytest.approx(_as_dict(prior.terms([5, 1])))  # the next item
    front = _as_dict(prior.terms([], [7]))
    assert front == pytest.approx({2: 2 * np.log(2), 3: 2 * np.log(2), 4: 2 * np.log(2), 7: -5.0})
    wide = _as_dict(prior.terms([6, 6, 6, 5, 1], [7, 4, 4, 4]))
    assert wide[5] == -5.0 and 6 not in wide  # the window (4) is split evenly: 5, 1 | 7, 4


def test_terms_add_transitions_of_the_last_item_and_the_repeat_bias_on_the_window():
    prior = _prior([[1, 2], [1, 2], [1, 3], [4, 1]], weight=2.0, bias=-5.0)
    indices, bonus = prior.terms([6, 4, 5, 2, 1])  # window (3): 5, 2, 1; last item 1 leads to 2 (x2), 3 (x1)
    got = dict(zip(indices.tolist(), bonus.tolist(), strict=True))
    assert got == pytest.approx({1: -5.0, 2: 2 * np.log(3) - 5.0, 3: 2 * np.log(2), 5: -5.0})
    assert [len(part) for part in prior.terms([])] == [0, 0]


def test_dense_scores_are_the_dot_product_plus_the_terms():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(8, 3)).astype(np.float32)
    prior = _prior([[1, 2, 3, 1, 4, 6], [2, 3, 5]], bias=-1.0)
    histories = [[1, 2], [3], [6, 6, 2]]
    intents = rng.normal(size=(3, 3)).astype(np.float32)
    scores = Scorer(rows, prior).scores(intents, histories)
    for row, history in enumerate(histories):
        expected = intents[row] @ rows[1:7].T
        indices, bonus = prior.terms(history)
        expected[indices - 1] += bonus
        assert scores[row] == pytest.approx(expected, abs=1e-5)


def _brute_force(rows, prior, intent, history, allowed, exclude, k, following=None):
    full = Scorer(rows, prior).scores(intent[None, :], [history], None if following is None else [following])[0]
    candidates = [i for i in range(1, len(rows) - 1) if allowed[i] and i not in exclude]
    want = sorted(candidates, key=lambda i: (-full[i - 1], i))[:k]
    return want, [float(full[i - 1]) for i in want]


@pytest.mark.parametrize("gap", [False, True])
@pytest.mark.parametrize("repeat_bias", [-8.0, 0.0, 3.0])
def test_serving_merge_and_exact_search_are_the_exact_top_k(repeat_bias, gap):
    """A top-(k + overfetch) search merged with the items the prior lifts (`Scorer.merge`, the ranker), and
    `ExactSearch` (batch), both equal ranking every allowed, not excluded item by the full score."""
    rng = np.random.default_rng(0)
    n_items, dim, k = 300, 6, 10
    rows = rng.normal(size=(n_items + 2, dim)).astype(np.float32)
    rows[5] = rows[4]  # a tie: the lower index comes first
    sequences = [rng.integers(1, n_items + 1, size=40) for _ in range(200)]
    prior = _prior(sequences, n_indices=n_items + 2, window=12, max_successors=30, weight=1.5, bias=repeat_bias)
    scorer = Scorer(rows, prior)
    allowed = rng.random(n_items + 2) < 0.7
    exact = scorer.searcher(allowed)
    lookup = lambda indices: {i: (rows[i], f"i{i}", {}) for i in indices if allowed[i]}  # noqa: E731
    for trial in range(30):
        history = rng.integers(1, n_items + 1, size=rng.integers(1, 20)).tolist()
        intent = rng.normal(size=dim).astype(np.float32)
        exclude = set(rng.choice(np.arange(1, n_items + 1), size=5).tolist()) | ({history[0]} if trial % 2 else set())
        following = rng.integers(1, n_items + 1, size=rng.integers(0, 15)).tolist() if gap else None
        want, want_scores = _brute_force(rows, prior, intent, history, allowed, exclude, k, following)
        base = rows[1:n_items + 1] @ intent
        searchable = [i for i in range(1, n_items + 1) if allowed[i] and i not in exclude]
        limit = k + scorer.overfetch(history, exclude, following)
        hits = [(i, float(base[i - 1]), f"i{i}", {}) for i in sorted(searchable, key=lambda i: -base[i - 1])[:limit]]
        got = scorer.merge(history, intent, hits, k, limit, exclude, lookup, following)
        assert [hit[0] for hit in got] == want
        assert [hit[1] for hit in got] == pytest.approx(want_scores, abs=1e-4)
        followings = None if following is None else [following]
        got_exact = exact.top_k(intent[None, :], [history], k, [exclude], followings)[0]
        assert [i for i, _ in got_exact] == want
        assert [score for _, score in got_exact] == pytest.approx(want_scores, abs=1e-4)


def test_no_prior_or_no_history_leaves_the_hits_alone():
    hits = [(3, 2.0, "c", {}), (1, 1.0, "a", {})]
    rows = np.zeros((6, 2), dtype=np.float32)
    assert Scorer(rows).merge([1], np.zeros(2), hits, 1, 1, set(), dict) == hits[:1]
    prior = _prior([[1, 2]], n_indices=6)
    assert Scorer(rows, prior).merge([], np.zeros(2), hits, 2, 2, set(), dict) == hits
    assert Scorer(rows, prior.weighted(1.0, -4.0)).overfetch([1, 1, 2, 5], {5}) == 2


def test_fit_leans_on_counts_when_the_encoder_knows_nothing():
    """Every user walks a cycle of the catalog from a random start. An untrained encoder knows nothing, so the
    fit must lean on the counts."""
    rng = np.random.default_rng(1)
    n_items = 40
    sequences = [np.array([(start + step) % n_items + 1 for step in range(int(rng.integers(6, 30)))])
                 for start in rng.integers(0, n_items, size=150)]
    split = leave_one_out(sequences)
    torch.manual_seed(0)
    model = BERT4Rec(ModelConfig(n_indices=n_items + 2, max_len=12, hidden_size=16, heads=2)).eval()
    fit = fit_sequence_prior(model, model_scorer(model), split.train, split.valid, n_items + 1)
    assert fit.prior.transition_weight > 0
    assert fit.ndcg > 0.9 > fit.encoder_ndcg
    assert fit.users == len(split.valid)


def test_one_standard_error_choice_takes_the_largest_weight_the_validation_cannot_tell_from_the_best():
    """Weight 1 is best by a hair, weight 3 is level within noise, weight 2 and 4 are clearly worse: weight 3 is
    chosen, at its best repeat bias."""
    rng = np.random.default_rng(3)
    users = 400
    noise = rng.uniform(0.0, 1.0, size=users)
    gains = np.zeros((5, 2, users))
    gains[1, 0] = noise
    gains[3, 1] = noise + np.where(np.arange(users) % 2 == 0, 0.1, -0.102)  # 0.001 lower on average: within one SE
    gains[3, 0] = gains[3, 1] * 0.5
    gains[2, :] = noise * 0.5
    gains[4, :] = noise * 0.2
    a, b, error = one_standard_error_choice(gains)
    assert (a, b) == (3, 1)
    assert 0 < error < 0.02


def test_one_standard_error_choice_keeps_a_clearly_better_point():
    users = 300
    gains = np.zeros((3, 2, users))
    gains[0, 1] = 1.0
    gains[2, 0] = np.r_[np.ones(users // 2), np.zeros(users - users // 2)]
    assert one_standard_error_choice(gains)[:2] == (0, 1)


def test_a_bundle_written_before_the_rules_reads_as_first_order():
    prior = _prior([[1, 2, 3]], reach=10, anchors=10)
    raw = ScoringSpec(Layout(4, 0, 0), prior.spec()).to_dict()
    assert (raw["prior"]["reach"], raw["prior"]["anchors"]) == (10, 10)
    del raw["prior"]["reach"], raw["prior"]["anchors"]
    old = ScoringSpec.from_dict(raw).prior
    assert (old.reach, old.anchors) == (1, 1)


@pytest.mark.parametrize("reach", [1, 3, 10])
def test_rules_equal_a_plain_count_over_every_pair(reach):
    """The vectorised counting against a loop over every pair: the same successors, strongest first (by the stored
    float32 value, ties to the lower index), truncated alike; empty and one-item sequences count nothing."""
    rng = np.random.default_rng(reach)
    sequences = [rng.integers(1, 60, size=rng.integers(0, 30)) for _ in range(300)] + [np.array([5]), np.zeros(0)]
    strength: dict[tuple[int, int], float] = {}
    for seq in sequences:
        for steps in range(1, reach + 1):
            for a, b in zip(seq[:-steps].tolist() if steps < len(seq) else [], seq[steps:].tolist(), strict=True):
                strength[(a, b)] = strength.get((a, b), 0.0) + 1.0 / steps
    want: dict[int, list[tuple[np.float32, int]]] = {}
    for (a, b), value in strength.items():
        want.setdefault(a, []).append((-np.float32(np.log1p(value)), b))
    prior = _prior(sequences, n_indices=62, max_successors=20, reach=reach)
    got = {a: prior.successors[prior.indptr[a]:prior.indptr[a + 1]].tolist() for a in range(62)
           if prior.indptr[a + 1] > prior.indptr[a]}
    assert got == {a: [b for _, b in sorted(rows)[:20]] for a, rows in want.items()}
