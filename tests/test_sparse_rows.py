"""Row-sparse item-table training (services/trainer/sparse_rows.py) against dense references.

- `gather_rows` gives the gradient dense indexing gives, as a sparse tensor of the touched rows only;
- `BERT4Rec.output_rows` equals the rows of the full item tables (id-only with transitions, and hybrid);
- N training steps of the product's sparse path (row-sparse gradients, `RowAdamW`, `clip_grad_norm`) end
  with the weights of a dense run of the same rule: dense autograd gradients, torch's `clip_grad_norm_`,
  torch's AdamW for the other parameters and, for the item tables, AdamW applied to the rows with a
  non-zero gradient and weight decay applied to every row at every step;
- `train_model` in sampled-softmax mode really trains the tables with sparse gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from seqrec.services.trainer.losses import NegativeSampler
from seqrec.services.trainer.masking import cloze_mask
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.sparse_rows import RowAdamW, clip_grad_norm, gather_rows
from seqrec.services.trainer.train import ClozeLoss

N_ITEMS = 60


def test_gather_rows_gradient_is_the_dense_one_on_touched_rows_only():
    torch.manual_seed(0)
    table = torch.randn(10, 3, requires_grad=True)
    index = torch.tensor([[1, 4, 4], [0, 7, 1]])
    upstream = torch.randn(2, 3, 3)
    (gather_rows(table, index, padding=0) * upstream).sum().backward()
    sparse = table.grad
    assert sparse.is_sparse and set(sparse.coalesce().indices()[0].tolist()) == {1, 4, 7}  # not the padding row
    dense_table = table.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.embedding(index, dense_table, padding_idx=0)
    (reference * upstream).sum().backward()
    assert torch.allclose(sparse.to_dense(), dense_table.grad)


def _model(hybrid: bool = False) -> BERT4Rec:
    torch.manual_seed(1)
    n = N_ITEMS + 2
    if not hybrid:
        return BERT4Rec(ModelConfig(n_indices=n, max_len=10, hidden_size=16, heads=2, dropout=0.0, transition_dim=8))
    text = torch.randn(n, 12)
    text[0] = text[-1] = 0
    model = BERT4Rec(ModelConfig(n_indices=n, max_len=10, hidden_size=16, heads=2, dropout=0.0, transition_dim=8,
                                 text_dim=12, content_dim=12, id_dropout=0.3), text=text, n_warm=N_ITEMS - 5)
    return model.to(torch.get_default_dtype())  # its text buffers too


@pytest.mark.parametrize("hybrid", [False, True], ids=["id-only", "hybrid"])
def test_output_rows_are_the_rows_of_the_full_tables(hybrid):
    model = _model(hybrid)
    with torch.no_grad():  # give the new-item marks and gates values, so every term shows
        for name, p in model.named_parameters():
            if name.startswith(("new_", "content_taps")):
                p.normal_()
    keep = model.id_keep(torch.Generator().manual_seed(2)) if hybrid else None
    index = torch.tensor([3, 0, 60, 61, 3, 17])
    rows = model.output_rows(index, keep)
    weight = torch.cat([model.output_weight(keep), model.transition_out(keep)], dim=1)
    assert torch.allclose(rows.weight, weight[index], atol=1e-6)
    assert torch.allclose(rows.bias, model.output_bias(keep)[index], atol=1e-6)
    if hybrid:
        assert torch.allclose(rows.content, model.output_content(keep)[index], atol=1e-6)


def _batches(steps: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(1, N_ITEMS - 10, size=(steps, 16, 1))
    return [torch.from_numpy((s + np.arange(10)) % N_ITEMS + 1) for s in starts]  # (16, 10) sequences


def _dense_row_adamw(table: torch.Tensor, state: dict, t: int, lr: float, wd: float) -> None:
    """The reference rule on dense tensors: every row decays, rows with a non-zero gradient take AdamW's step."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    grad = table.grad
    touched = grad.reshape(grad.shape[0], -1).ne(0).any(1)
    m, v = state.setdefault("m", torch.zeros_like(table)), state.setdefault("v", torch.zeros_like(table))
    with torch.no_grad():
        table.mul_(1 - lr * wd)
        m[touched] = beta1 * m[touched] + (1 - beta1) * grad[touched]
        v[touched] = beta2 * v[touched] + (1 - beta2) * grad[touched] ** 2
        step = (m[touched] / (1 - beta1 ** t)) / (v[touched].sqrt() / (1 - beta2 ** t) ** 0.5 + eps)
        table[touched] -= lr * step


@pytest.fixture
def float64():
    """Double precision: Adam normalises gradients, so float32 noise in a gradient that is zero in exact arithmetic
    (a key bias under softmax) becomes a full step of either sign; in float64 the runs agree to ~1e-14."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("hybrid", [False, True], ids=["id-only", "hybrid"])
def test_sparse_steps_end_with_the_weights_of_the_dense_reference(hybrid, float64):
    lr, wd, clip, steps = 0.01, 0.1, 0.5, 25
    sparse_model = _model(hybrid)
    dense_model = copy.deepcopy(sparse_model)
    counts = torch.ones(N_ITEMS + 2)
    tables = sparse_model.item_tables()
    rows = RowAdamW(tables, lr=lr, weight_decay=wd)
    sparse_model.row_optimizer = rows
    others = torch.optim.AdamW([p for p in sparse_model.parameters() if not any(p is q for q in tables)],
                               lr=lr, weight_decay=wd)
    dense_tables = dense_model.item_tables()
    dense_others = torch.optim.AdamW([p for p in dense_model.parameters() if not any(p is q for q in dense_tables)],
                                     lr=lr, weight_decay=wd)
    states = [{} for _ in dense_tables]
    losses = []
    clipped = 0
    for t, batch in enumerate(_batches(steps), start=1):
        outcome = []
        for model in (sparse_model, dense_model):
            generator = torch.Generator().manual_seed(100 + t)  # the same masks, negatives and id dropout
            inputs, labels = cloze_mask(batch, 0.3, N_ITEMS + 1, N_ITEMS, 0.2, generator, 0.0)
            loss = ClozeLoss(model, N_ITEMS, NegativeSampler(counts, N_ITEMS), 20, generator, generator)(inputs,
                                                                                                          labels)
            model.zero_grad(set_to_none=True)
            loss.backward()
            outcome.append(loss.item())
        losses.append(outcome)
        assert all(p.grad is None or p.grad.is_sparse for p in tables)
        norm = clip_grad_norm(sparse_model.parameters(), clip)
        rows.step()
        others.step()
        clipped += int(norm > clip)
        dense_norm = torch.nn.utils.clip_grad_norm_(dense_model.parameters(), clip)
        assert torch.allclose(norm, dense_norm, rtol=1e-10)
        for table, state in zip(dense_tables, states, strict=True):
            _dense_row_adamw(table, state, t, lr, wd)
        dense_others.step()
    assert clipped > 0  # clipping took part
    assert all(abs(a - b) < 1e-10 for a, b in losses)
    rows.flush()
    for (name, a), b in zip(sparse_model.named_parameters(), dense_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (name, (a - b).abs().max().item())


def test_train_model_trains_the_tables_sparsely_in_sampled_mode():
    from seqrec.services.trainer.split import leave_one_out
    from seqrec.services.trainer.train import train_model
    from seqrec.shared.config import build_hparams

    rng = np.random.default_rng(0)
    sequences = [(int(rng.integers(N_ITEMS)) + np.arange(int(rng.integers(5, 12)))) % N_ITEMS + 1
                 for _ in range(120)]
    split = leave_one_out(sequences)
    counts = np.bincount(np.concatenate(split.train), minlength=N_ITEMS + 2)
    seen: list[bool] = []
    model = _model()

    def after_epoch(_record) -> None:  # the last step's gradients are still on the parameters
        seen.extend(p.grad is not None and p.grad.is_sparse for p in model.item_tables())

    hp = build_hparams(max_len=10, hidden_size=16, heads=2, epochs=2, batch_size=32, lr=0.003, negative_samples=10,
                       eval_every=1)
    result = train_model(model, split, hp, N_ITEMS, counts, seed=3, on_epoch=after_epoch, progress=False)
    assert len(seen) == 2 * len(model.item_tables()) and all(seen)
    assert model.row_optimizer is None and result.history[-1].valid
