"""Cloze masking invariants (cf. Transformers4Rec's masking tests)."""

import torch

from seqrec.services.trainer.masking import causal_targets, cloze_mask

N_ITEMS, MASK = 50, 51


def _batch(rows: int = 512, width: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (rows, width), generator=g)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    pad = torch.arange(width)[None, :] < (width - lengths)[:, None]
    return seqs.masked_fill(pad, 0)


def _mask(seqs: torch.Tensor, ratio: float = 0.15, last: float = 0.0, seed: int = 1):
    return cloze_mask(seqs, ratio, MASK, N_ITEMS, last, torch.Generator().manual_seed(seed))


def test_padding_is_never_masked_or_changed():
    seqs = _batch()
    inputs, labels = _mask(seqs, ratio=0.9)
    pad = seqs == 0
    assert (labels[pad] == 0).all()
    assert (inputs[pad] == 0).all()


def test_at_least_one_masked_item_per_sequence():
    seqs = _batch()
    _, labels = _mask(seqs, ratio=0.01)
    assert ((labels != 0).sum(1) >= 1).all()


def test_not_all_items_masked_when_sequence_has_two_or_more():
    seqs = _batch()
    _, labels = _mask(seqs, ratio=0.99)
    n_real = (seqs != 0).sum(1)
    n_masked = (labels != 0).sum(1)
    multi = n_real >= 2
    assert (n_masked[multi] < n_real[multi]).all()


def test_labels_hold_the_original_items():
    seqs = _batch()
    _, labels = _mask(seqs, ratio=0.5)
    where = labels != 0
    assert torch.equal(labels[where], seqs[where])


def test_80_10_10_replacement():
    seqs = _batch(rows=4000, width=20)
    inputs, labels = _mask(seqs, ratio=0.5)
    where = labels != 0
    total = where.sum().item()
    to_mask = (inputs[where] == MASK).float().sum().item() / total
    kept = (inputs[where] == seqs[where]).float().sum().item() / total
    assert abs(to_mask - 0.8) < 0.02
    # kept = the 10% "keep" share plus random replacements that drew the same item (1/50 of 10%)
    assert abs(kept - 0.1 - 0.1 / N_ITEMS) < 0.02
    unmasked = (seqs != 0) & ~where
    assert torch.equal(inputs[unmasked], seqs[unmasked])


def test_mask_ratio_is_respected_on_average():
    seqs = _batch(rows=4000, width=50)
    seqs[seqs == 0] = 7  # full rows
    _, labels = _mask(seqs, ratio=0.2)
    share = (labels != 0).float().mean().item()
    assert abs(share - 0.2) < 0.01


def test_last_item_only_share():
    seqs = _batch(rows=4000)
    _, labels = _mask(seqs, ratio=0.15, last=1.0)
    assert (labels[:, -1] != 0).all()
    assert (labels[:, :-1] == 0).all()
    _, labels = _mask(seqs, ratio=0.15, last=0.3)
    last_only = ((labels[:, :-1] == 0).all(1) & (labels[:, -1] != 0)).float().mean().item()
    assert 0.3 <= last_only < 0.45  # the share, plus rows whose random mask happened to pick only the last item


def test_next_item_rows_are_random_prefixes_ending_in_mask():
    seqs = _batch(rows=2000)
    inputs, labels = _mask(seqs, ratio=0.15, last=1.0)
    assert (inputs[:, -1] == MASK).all()
    cut_points = set()
    for row in range(seqs.shape[0]):
        original = seqs[row][seqs[row] != 0].tolist()
        prefix = inputs[row, :-1][inputs[row, :-1] != 0].tolist() + [int(labels[row, -1])]
        assert original[: len(prefix)] == prefix  # nothing after the target is visible
        assert len(prefix) >= min(2, len(original))
        cut_points.add(len(original) - len(prefix))
    assert len(cut_points) > 10  # the cut moves: not always the window's newest item


def test_masking_is_reproducible_with_a_seeded_generator():
    seqs = _batch()
    a = _mask(seqs, seed=5)
    b = _mask(seqs, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_next_item_rows_with_context_masking():
    seqs = _batch(rows=4000, width=30)
    inputs, labels = cloze_mask(seqs, 0.15, MASK, N_ITEMS, 1.0, torch.Generator().manual_seed(3), context_ratio=0.3)
    assert (inputs[:, -1] == MASK).all() and (labels[:, -1] != 0).all()  # the next-item target, shown as [MASK]
    assert (labels[:, -2] == 0).all()  # the item right before the target stays visible, as at serving
    real_context = (inputs[:, :-2] != 0) | (labels[:, :-2] != 0)
    share = (labels[:, :-2] != 0).sum().item() / real_context.sum().item()
    assert 0.27 < share < 0.33  # Cloze targets in the context at the ratio asked for
    assert ((labels == 0) | (labels == inputs) | (inputs == MASK) | (inputs <= N_ITEMS)).all()
    plain = cloze_mask(seqs, 0.15, MASK, N_ITEMS, 1.0, torch.Generator().manual_seed(3))
    assert ((plain[1][:, :-1] == 0).all())  # without it, next-item rows keep one target


def test_causal_targets_label_every_item_but_the_first_and_hide_the_newest():
    seqs = _batch()
    inputs, labels = causal_targets(seqs, MASK)
    real = seqs != 0
    first = real.int().argmax(1)
    rows = torch.arange(len(seqs))
    assert (labels[rows, first] == 0).all()
    assert (labels.ne(0).sum(1) == real.sum(1) - 1).all()  # one target per item after the first
    assert torch.equal(labels[labels != 0], seqs[labels != 0])
    assert (inputs[:, -1] == MASK).all()  # the newest item is answered from the slots before it
    assert torch.equal(inputs[:, :-1], seqs[:, :-1])
