"""Loss functions: sampled softmax with log-Q correction, full softmax, per-sequence averaging."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqrec.services.trainer.losses import (
    CandidateRows,
    ContentTerm,
    NegativeSampler,
    full_softmax_loss,
    per_sequence_mean,
    sampled_softmax_loss,
)


def sampled_loss(out, weight, bias, labels, sampler, n_negatives, generator=None, content=None):
    """The sampled loss over rows taken from full tables (as `BERT4Rec.output_rows` builds them)."""
    negatives = sampler.sample((n_negatives,), generator)
    table = None if content is None else content.table

    def rows(index):
        return CandidateRows(weight[index], bias[index], None if table is None else table[index])

    return sampled_softmax_loss(out, labels, rows(labels), negatives, rows(negatives), sampler.log_q, content)


def test_per_sequence_mean_weighs_sequences_equally():
    position_loss = torch.tensor([1.0, 3.0, 5.0, 10.0])
    rows = torch.tensor([0, 0, 0, 1])  # row 0 has three masked items, row 1 one
    assert per_sequence_mean(position_loss, rows, 2).item() == pytest.approx((3.0 + 10.0) / 2)


def test_full_softmax_is_cross_entropy_over_all_items():
    torch.manual_seed(0)
    out, weight, bias = torch.randn(5, 8), torch.randn(20, 8), torch.randn(20)
    labels = torch.randint(1, 20, (5,))
    expected = F.cross_entropy(out @ weight.T + bias, labels, reduction="none")
    assert torch.allclose(full_softmax_loss(out, weight, bias, labels), expected)


def test_sampler_draws_items_only_in_proportion_to_counts_plus_one():
    counts = torch.tensor([0, 9, 0, 99, 0])  # padding, 3 items, [MASK]
    sampler = NegativeSampler(counts, n_items=3)
    draws = sampler.sample((200_000,), torch.Generator().manual_seed(0))
    assert draws.min() >= 1 and draws.max() <= 3
    share = torch.bincount(draws, minlength=5).float() / len(draws)
    assert share[1].item() == pytest.approx(10 / 111, abs=0.005)  # weights 10, 1, 100
    assert share[3].item() == pytest.approx(100 / 111, abs=0.005)
    assert sampler.log_q[3].item() == pytest.approx(math.log(100 / 111), abs=1e-5)


def test_sampled_softmax_approaches_full_softmax_with_many_negatives():
    """With log-Q correction, sum_j exp(s_j - log q_j) over N draws estimates N * Z, so the sampled loss
    estimates full loss + log N + log q(positive)."""
    torch.manual_seed(0)
    n_items = 50
    counts = torch.cat([torch.zeros(1), torch.randint(1, 100, (n_items,)).float(), torch.zeros(1)])
    sampler = NegativeSampler(counts, n_items)
    out, weight, bias = torch.randn(64, 8), torch.randn(n_items + 2, 8) * 0.5, torch.zeros(n_items + 2)
    labels = torch.randint(1, n_items + 1, (64,))
    full = full_softmax_loss(out, weight[: n_items + 1], bias[: n_items + 1], labels).mean()
    sampled = sampled_loss(out, weight, bias, labels, sampler, 5000, torch.Generator().manual_seed(1))
    expected = full.item() + math.log(5000) + sampler.log_q[labels].mean().item()
    assert sampled.mean().item() == pytest.approx(expected, abs=0.05)


def test_accidental_hits_are_removed():
    sampler = NegativeSampler(torch.tensor([0, 1, 0]), n_items=1)  # one item: every negative is the positive
    loss = sampled_loss(torch.ones(3, 4), torch.ones(3, 4), torch.zeros(3), torch.tensor([1, 1, 1]), sampler, 10)
    assert torch.allclose(loss, torch.zeros(3))  # only the positive is left in each softmax


def _content_case():
    torch.manual_seed(1)
    out, weight, bias = torch.randn(5, 8), torch.randn(20, 8), torch.randn(20)
    labels = torch.randint(1, 20, (5,))
    table = torch.randn(20, 6)
    content = ContentTerm(positions=torch.tensor([1, 4]), query=torch.randn(2, 6), table=table)
    extra = torch.zeros(5, 20)
    extra[[1, 4]] = content.query @ table.T  # only the chosen positions get the content logits
    return out, weight, bias, labels, content, extra


def test_content_term_adds_logits_at_its_positions_only_in_the_full_softmax():
    out, weight, bias, labels, content, extra = _content_case()
    expected = F.cross_entropy(out @ weight.T + bias + extra, labels, reduction="none")
    assert torch.allclose(full_softmax_loss(out, weight, bias, labels, content), expected)


def test_content_term_reaches_the_sampled_softmax():
    out, weight, bias, labels, content, extra = _content_case()
    sampler = NegativeSampler(torch.ones(21), n_items=19)
    draw = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same negatives for both calls
    with_content = sampled_loss(out, weight, bias, labels, sampler, 7, draw(), content)
    without = sampled_loss(out, weight, bias, labels, sampler, 7, draw())
    assert torch.equal(with_content[[0, 2, 3]], without[[0, 2, 3]])
    assert not torch.allclose(with_content[[1, 4]], without[[1, 4]])


def test_sampled_softmax_shares_one_draw_of_negatives_across_positions():
    """Each position's softmax: its positive and the step's N negatives (minus accidental hits), log-Q corrected."""
    torch.manual_seed(2)
    n_items, n_negatives = 12, 9
    counts = torch.cat([torch.zeros(1), torch.arange(1, n_items + 1).float(), torch.zeros(1)])
    sampler = NegativeSampler(counts, n_items)
    out, weight, bias = torch.randn(6, 4), torch.randn(n_items + 2, 4), torch.randn(n_items + 2)
    labels = torch.randint(1, n_items + 1, (6,))
    loss = sampled_loss(out, weight, bias, labels, sampler, n_negatives, torch.Generator().manual_seed(5))
    negatives = sampler.sample((n_negatives,), torch.Generator().manual_seed(5))
    for p in range(6):
        kept = negatives[negatives != labels[p]]
        candidates = torch.cat([labels[p:p + 1], kept])
        logits = weight[candidates] @ out[p] + bias[candidates] - sampler.log_q[candidates]
        assert loss[p].item() == pytest.approx(-torch.log_softmax(logits, 0)[0].item(), abs=1e-5)
