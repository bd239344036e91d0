"""Cloze masking on tensors (no per-sample Python loops).

Invariants (unit-tested): padding is never masked; every sequence has at least one masked item;
a sequence with two or more items keeps at least one unmasked; a `last_item_share` of sequences
becomes next-item examples: cut after a random item, that item moved to the last slot and masked,
nothing after it visible — exactly what serving sees. Cutting at random (not always at the window's
end) matters: fixed cuts give one next-item target per window, which the model memorises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrec.shared.vocab import PAD_INDEX


def _pick_one(candidates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One-hot [B, L] of a uniformly random True position per row of `candidates` (rows with any)."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = torch.where(candidates, noise + 1.0, torch.zeros_like(noise))
    choice = noise.argmax(dim=1, keepdim=True)
    return torch.zeros_like(candidates).scatter_(1, choice, True) & candidates


def _random_prefix(seqs: torch.Tensor, n_real: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each row cut after a random item (keeping at least two), re-aligned so that item is in the last slot."""
    u = torch.rand((seqs.shape[0], 1), generator=generator, device=seqs.device)
    shift = (u * (n_real - 1).clamp(min=0)).long()  # items dropped from the end: 0 .. n_real - 2
    source = torch.arange(seqs.shape[1], device=seqs.device)[None, :] - shift
    return torch.where(source >= 0, seqs.gather(1, source.clamp(min=0)), torch.full_like(seqs, PAD_INDEX))


def cloze_mask(
    seqs: torch.Tensor,
    mask_ratio: float,
    mask_index: int,
    n_items: int,
    last_item_share: float = 0.0,
    generator: torch.Generator | None = None,
    context_ratio: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (inputs, labels) for a left-padded batch `seqs` [B, L] of item indices.

    labels hold the original item at masked positions and PAD_INDEX (ignored) elsewhere. Masked
    positions become [MASK] 80% of the time, a random item 10%, and stay unchanged 10%; a next-item
    row always shows [MASK] in its last slot, exactly as serving does; with `context_ratio` > 0 a share
    of the items before it are masked too (Cloze targets beside the next-item one), never the item right
    before the target. Next-item rows are
    re-aligned prefixes of their sequence, so their labels line up with `inputs`, not with `seqs`.
    """
    device = seqs.device
    real = seqs != PAD_INDEX
    rand = lambda: torch.rand(seqs.shape, generator=generator, device=device)  # noqa: E731
    masked = (rand() < mask_ratio) & real

    n_real = real.sum(dim=1, keepdim=True)
    all_masked = (masked.sum(dim=1, keepdim=True) == n_real) & (n_real > 1)
    masked = masked & ~(all_masked & _pick_one(masked, generator))
    none_masked = masked.sum(dim=1, keepdim=True) == 0
    masked = masked | (none_masked & _pick_one(real, generator))

    last_only = torch.rand((seqs.shape[0], 1), generator=generator, device=device) < last_item_share
    if last_item_share > 0:
        seqs = torch.where(last_only, _random_prefix(seqs, n_real, generator), seqs)
        last_slot = torch.zeros_like(masked)
        last_slot[:, -1] = True
        context = torch.zeros_like(masked)
        if context_ratio > 0:  # the item just before the target stays visible, as at serving
            context = rand() < context_ratio
            context[:, -2:] = False
        masked = torch.where(last_only, (last_slot | context) & (seqs != PAD_INDEX), masked)

    labels = torch.where(masked, seqs, torch.full_like(seqs, PAD_INDEX))
    action = rand()
    action[:, -1] = torch.where(last_only[:, 0], 0.0, action[:, -1])  # a next-item target always shows [MASK]
    random_items = torch.randint(1, n_items + 1, seqs.shape, generator=generator, device=device)
    inputs = torch.where(masked & (action < 0.8), torch.full_like(seqs, mask_index), seqs)
    inputs = torch.where(masked & (action >= 0.8) & (action < 0.9), random_items, inputs)
    return inputs, labels


def causal_targets(seqs: torch.Tensor, mask_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a causal-mode batch (`ModelConfig.causal`) from left-padded `seqs` [B, L].

    Every item but a row's first is a label (the slot before it answers for it); inputs are the row with its
    newest item replaced by [MASK], so the newest item is learned from the slots before it exactly as serving
    asks, with the history's last item one slot before the [MASK].
    """
    real = seqs != PAD_INDEX
    first = real & ~F.pad(real[:, :-1], (1, 0), value=False)
    labels = torch.where(real & ~first, seqs, torch.full_like(seqs, PAD_INDEX))
    inputs = seqs.clone()
    inputs[:, -1] = torch.where(real[:, -1], torch.full_like(seqs[:, -1], mask_index), inputs[:, -1])
    return inputs, labels
