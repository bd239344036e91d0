"""The training loop: Cloze batches, AdamW, clipping, validation, early stopping, best weights restored."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrec.services.trainer.batching import batch_plan, window_lengths
from seqrec.services.trainer.evaluate import evaluate
from seqrec.services.trainer.losses import (
    NegativeSampler,
    full_softmax_loss,
    per_sequence_mean,
    sampled_softmax_loss,
)
from seqrec.services.trainer.masking import cloze_mask
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import LeaveOneOut, training_windows
from seqrec.shared.config import Hyperparameters

log = logging.getLogger(__name__)
PROBE_USERS = 1000  # users in the train-side probe used to spot overfitting
VALID_USERS = 10_000  # validation users scored after each epoch (all of them for the final metrics)
AUTO_EVAL_STEPS = 200  # eval_every=0: validate about every this many optimizer steps (at least every epoch)


class TrainingError(RuntimeError):
    """Training could not continue; the message says why and what to change."""


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float
    sequences_per_s: float
    positions_per_s: float
    valid: dict[str, float] = field(default_factory=dict)
    train_probe: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: BERT4Rec
    history: list[EpochRecord]
    best_epoch: int
    best_valid: dict[str, float]
    train_seconds: float
    stopped_early: bool
    device: str


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_model(
    model: BERT4Rec,
    split: LeaveOneOut,
    hp: Hyperparameters,
    n_items: int,
    item_counts: np.ndarray,
    seed: int,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    n_warm: int | None = None,
) -> TrainResult:
    """Train `model` on windows of the training sequences; keep the weights with the best validation NDCG@10.

    Only items 1..n_warm (those with interactions) are targets, negatives and random replacements;
    catalog-only items after them are never pushed down for lack of history.
    """
    n_warm = n_items if n_warm is None else n_warm
    device = pick_device()
    model.to(device)
    mask_index = n_items + 1
    generator = torch.Generator(device=device).manual_seed(seed)
    shuffle_rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sampler = NegativeSampler(torch.as_tensor(item_counts), n_warm).to(device) if hp.negative_samples else None
    windows = training_windows(split.train, hp.max_len, hp.window_stride, hp.sampling)
    data = torch.from_numpy(windows)
    if device.type == "cuda":
        data = data.pin_memory()
    lengths = window_lengths(windows)
    probe = split.train_probe.sample(PROBE_USERS, seed)
    valid = split.valid.sample(VALID_USERS, seed)

    steps_per_epoch = math.ceil(len(windows) / hp.batch_size)
    eval_every = hp.eval_every or max(1, round(AUTO_EVAL_STEPS / steps_per_epoch))
    log.info("validating every %d epoch(s)", eval_every, extra={"steps_per_epoch": steps_per_epoch})
    history: list[EpochRecord] = []
    best_ndcg, best_epoch, best_state, best_valid = -1.0, 0, None, {}
    train_seconds, stale, stopped_early = 0.0, 0, False
    for epoch in range(1, hp.epochs + 1):
        model.train()
        plan = batch_plan(lengths, hp.batch_size, shuffle_rng)
        n_batches = len(plan)
        bar = tqdm(plan, desc=f"epoch {epoch}/{hp.epochs}", unit="batch", leave=False,
                   disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for b, (rows, width) in enumerate(bar):
            batch = data[torch.from_numpy(rows), -width:].to(device, non_blocking=True)
            inputs, labels = cloze_mask(batch, hp.mask_ratio, mask_index, n_warm, hp.last_item_mask_share,
                                        generator)
            flat = (labels != 0).view(-1).nonzero().squeeze(1)  # masked positions only
            keep = model.id_keep(generator)  # hybrid: which items keep their id part this step
            hidden = model.encode(inputs, keep)
            out = model.project(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat))  # (P, C)
            targets = labels.view(-1).index_select(0, flat)
            weight, bias = model.output_weight(keep), model.output_bias(keep)
            if sampler is None:
                position_loss = full_softmax_loss(out, weight[: n_warm + 1], bias[: n_warm + 1], targets)
            else:
                position_loss = sampled_softmax_loss(out, weight, bias, targets, sampler, hp.negative_samples,
                                                     generator)
            loss = per_sequence_mean(position_loss, flat // inputs.shape[1], inputs.shape[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            loss_sum += loss.detach()
            if progress and (b % 10 == 0 or b == n_batches - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / (b + 1):.4f}")
        seconds = time.perf_counter() - started
        train_seconds += seconds
        mean_loss = loss_sum.item() / max(n_batches, 1)
        if not math.isfinite(mean_loss):
            raise TrainingError(f"loss became {mean_loss} in epoch {epoch}: keep gradient clipping on "
                                f"(grad_clip={hp.grad_clip}) and lower the learning rate "
                                f"(lr={hp.lr}, try {hp.lr / 10:g})")
        record = EpochRecord(epoch=epoch, loss=mean_loss, seconds=seconds,
                             sequences_per_s=len(data) / seconds, positions_per_s=float(lengths.sum()) / seconds)
        if epoch % eval_every == 0 or epoch == hp.epochs:
            record.valid = evaluate(model, valid, mask_index)
            record.train_probe = evaluate(model, probe, mask_index)
            ndcg = record.valid.get("ndcg@10", 0.0)
            if ndcg > best_ndcg:
                best_ndcg, best_epoch, best_valid, stale = ndcg, epoch, record.valid, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(record)
        bar.close()
        line = (f"epoch {epoch:>3}  loss {mean_loss:.4f}  valid HR@10 {record.valid.get('hr@10', float('nan')):.4f}"
                f"  NDCG@10 {record.valid.get('ndcg@10', float('nan')):.4f}"
                f"  (train probe {record.train_probe.get('ndcg@10', float('nan')):.4f})"
                f"  {record.sequences_per_s:,.0f} seq/s"
                f"  ({seconds:.1f}s)")
        if progress:
            tqdm.write(line)
        log.info(line, extra={"epoch": epoch, "loss": mean_loss, "valid_ndcg10": record.valid.get("ndcg@10"),
                              "valid_hr10": record.valid.get("hr@10"), "seconds": round(seconds, 3)})
        if on_epoch:
            on_epoch(record)
        if stale >= hp.patience:
            stopped_early = True
            log.info("early stop: no validation NDCG@10 gain for %d evaluations", stale)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, history=history, best_epoch=best_epoch, best_valid=best_valid,
                       train_seconds=train_seconds, stopped_early=stopped_early, device=str(device))


def history_as_dicts(history: list[EpochRecord]) -> list[dict[str, Any]]:
    return [r.__dict__ for r in history]
