"""What a training run shows while it runs: the progress bar's loss and validation, the line per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from seqrec.services.trainer.train import EpochRecord


def epoch_line(what: str, record: EpochRecord) -> str:
    """The one-line summary of an epoch for terminals and logs (validation only when it ran)."""
    checked = ""
    if record.valid:
        checked = (f"  valid HR@10 {record.valid.get('hr@10', float('nan')):.4f}"
                   f"  NDCG@10 {record.valid.get('ndcg@10', float('nan')):.4f}"
                   f"  (train probe {record.train_probe.get('ndcg@10', float('nan')):.4f})")
    return (f"{what} {record.epoch:>3}  loss {record.loss:.4f}{checked}  {record.sequences_per_s:,.0f} seq/s"
            f"  ({record.seconds:.1f}s)")


class LossDisplay:
    """The progress bar's running mean loss and latest validation. On CUDA without a host sync: the sum is
    copied to pinned memory asynchronously and shown once that copy has landed (a few steps late); on CPU at once."""

    def __init__(self, bar: Any, device: torch.device):
        self.bar = bar
        self.valid = ""
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host = torch.zeros((), pin_memory=True)
            self.copied = torch.cuda.Event()
            self.steps = 0

    def validated(self, valid: dict[str, float]) -> None:
        """Show the latest validation beside the loss from now on."""
        nan = float("nan")
        self.valid = f", valid NDCG@10 {valid.get('ndcg@10', nan):.4f} HR@10 {valid.get('hr@10', nan):.4f}"

    def _show(self, loss: float) -> None:
        self.bar.set_postfix_str(f"loss {loss:.4f}{self.valid}", refresh=False)

    def update(self, loss_sum: torch.Tensor, steps: int) -> None:
        if not self.cuda:
            self._show(loss_sum.item() / steps)
            return
        if not self.copied.query():  # the last copy is still in flight: show it next time
            return
        if self.steps:
            self._show(self.host.item() / self.steps)
        self.host.copy_(loss_sum, non_blocking=True)
        self.copied.record()
        self.steps = steps
