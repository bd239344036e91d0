"""Row-sparse training of the item tables: a step costs what it touches, not the catalogue.

In sampled-softmax mode a step reads a few thousand rows of each item table (the batch's items, its
targets and the shared negatives). Dense autograd still builds a full catalogue x width gradient for each
table, and a dense AdamW then walks every row: at a million items that was most of the step
(docs/growth.md). Here:

- `gather_rows` reads rows with a gradient that is a sparse COO tensor holding only those rows;
- `RowAdamW` is AdamW for such tables: the rows with a non-zero gradient get the AdamW update, and the
  decoupled weight decay that every row takes at every step is one running scale per table (the rows are
  stored divided by it), so reading a row always gives its decayed value. Moments of untouched rows are
  left as they are (the "lazy Adam" rule of TF's LazyAdam and TorchRec's row-wise optimizers): dense
  AdamW would keep moving such a row by its old momentum for a while;
- `clip_grad_norm` clips dense and sparse gradients together by their global norm, as
  `torch.nn.utils.clip_grad_norm_` does for dense ones;
- `all_reduce_sparse_mean` averages sparse gradients over data-parallel ranks (DistributedDataParallel
  only reduces dense ones, and NCCL has no sparse all-reduce): indices and values are all-gathered.

tests/test_sparse_rows.py checks that a sparse run ends with the weights of a dense run of the same
rule, weight decay and clipping included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, padding: int, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(index)
        ctx.shape, ctx.padding = table.shape, padding
        rows = table.index_select(0, index)
        return rows if scale == 1.0 else rows * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (index,) = ctx.saved_tensors
        if ctx.padding >= 0:  # the padding row never learns (as nn.Embedding's padding_idx)
            kept = index != ctx.padding
            index, grad = index[kept], grad[kept]
        # the gradient of the rows as read (scale included): what a dense table would get, and what RowAdamW takes
        return torch.sparse_coo_tensor(index[None], grad, ctx.shape, check_invariants=False), None, None, None


def gather_rows(table: torch.Tensor, index: torch.Tensor, padding: int | None = None,
                scale: float = 1.0) -> torch.Tensor:
    """`table[index] * scale` for an index of any shape; the gradient reaching `table` is sparse (only those rows)
    and is the gradient of the rows as read. Rows at `padding` get no gradient."""
    rows = _GatherRows.apply(table, index.reshape(-1), -1 if padding is None else padding, float(scale))
    return rows.view(*index.shape, *table.shape[1:])


def _coalesced(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce() if grad.is_sparse else grad


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale every gradient (dense or sparse) so that their global L2 norm is at most `max_norm`; returns the
    norm before clipping. Sparse gradients are coalesced first: a row gathered twice counts once, summed."""
    grads = []
    for p in params:
        if p.grad is not None:
            p.grad = _coalesced(p.grad)
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    norms = [torch.linalg.vector_norm(g.values() if g.is_sparse else g) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grad_norm_'s coefficient
    for g in grads:
        (g.values() if g.is_sparse else g).mul_(scale)
    return total


def all_reduce_sparse_mean(grad: torch.Tensor) -> torch.Tensor:
    """The mean over all ranks of a sparse gradient (every rank gets the same coalesced result)."""
    world = dist.get_world_size()
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()
    sizes = [torch.zeros(1, dtype=torch.long, device=index.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([index.numel()], device=index.device))
    longest = int(max(s.item() for s in sizes))
    pad = longest - index.numel()
    padded_index = torch.cat([index, index.new_zeros(pad)])
    padded_values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
    indices = [torch.empty_like(padded_index) for _ in range(world)]
    gathered = [torch.empty_like(padded_values) for _ in range(world)]
    dist.all_gather(indices, padded_index)
    dist.all_gather(gathered, padded_values)
    counts = [int(s.item()) for s in sizes]
    all_index = torch.cat([i[:n] for i, n in zip(indices, counts, strict=True)])
    all_values = torch.cat([v[:n] for v, n in zip(gathered, counts, strict=True)]) / world
    return torch.sparse_coo_tensor(all_index[None], all_values, grad.shape).coalesce()


class RowAdamW(torch.optim.Optimizer):
    """AdamW for item tables with sparse gradients: per step, work in the rows touched, never the catalogue.

    Every row decays at every step (decoupled weight decay), without touching it: a table holds its rows
    divided by a running scale, `scale(table)` times the stored row is the row's value (read them with
    `gather_rows(table, index, scale=...)`), and a step multiplies the scale by `1 - lr * weight_decay`.
    The rows with a non-zero gradient then get exactly AdamW's update (bias corrections by the global step).
    Their moments are the only optimizer state that moves; an untouched row's are left as they are, where
    dense AdamW would keep moving the row by its old momentum for a while (the rule of TF's LazyAdam and
    TorchRec's row-wise optimizers). `flush` folds the scale into the stored rows (before reading the tables
    directly: validation, a state copy, export); it also runs by itself before the scale gets small.
    """

    MIN_SCALE = 1e-6  # fold the scale into the rows before the stored rows grow beyond this factor

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps})
        self.steps = 0
        self._scales: dict[torch.Tensor, float] = {}

    def scale(self, table: torch.Tensor) -> float:
        """The factor between `table`'s stored rows and their values (1.0 right after `flush`)."""
        return self._scales.get(table, 1.0)

    def _moments(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["exp_avg"], state["exp_avg_sq"]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        self.steps += 1
        t = self.steps
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            beta1, beta2 = group["betas"]
            bias1, bias2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
            for p in group["params"]:
                scale = self.scale(p) * (1.0 - lr * group["weight_decay"])  # this step's decay, for every row
                self._scales[p] = scale
                if p.grad is not None:
                    grad = _coalesced(p.grad)
                    grad = grad if grad.is_sparse else grad.to_sparse(1)
                    rows, values = grad.indices()[0], grad.values()
                    learned = values.reshape(len(rows), -1).ne(0).any(1)  # e.g. a hybrid item whose id was hidden
                    rows, values = rows[learned], values[learned]
                    exp_avg, exp_avg_sq = self._moments(p)
                    m = exp_avg.index_select(0, rows).mul_(beta1).add_(values, alpha=1.0 - beta1)
                    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
                    exp_avg.index_copy_(0, rows, m)
                    exp_avg_sq.index_copy_(0, rows, v)
                    step = m.div_((v.sqrt() / math.sqrt(bias2)).add_(eps))  # as torch's AdamW
                    p.index_add_(0, rows, step, alpha=-lr / bias1 / scale)  # stored rows are values / scale
                if scale < self.MIN_SCALE:
                    self._fold(p)
        return None

    def _fold(self, p: torch.Tensor) -> None:
        scale = self._scales.pop(p, 1.0)
        if scale != 1.0:
            p.mul_(scale)

    @torch.no_grad()
    def flush(self) -> None:
        """Fold every table's scale into its rows: the tables then hold the current values themselves."""
        for group in self.param_groups:
            for p in group["params"]:
                self._fold(p)
