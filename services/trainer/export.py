"""ONNX export of the encoder (dynamo exporter: dynamic batch and sequence length)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from seqrec.services.trainer.model import BERT4Rec

INPUT_NAME = "item_ids"
OUTPUT_NAME = "intent"
OPSET = 18


class _IntentOnly(torch.nn.Module):
    """Wraps the model so the exported graph is `item_ids -> intent`, weights inside the file."""

    def __init__(self, model: BERT4Rec):
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.model(item_ids)


def export_encoder(model: BERT4Rec, path: Path) -> Path:
    """Write `item_ids` int64 [batch, length <= max_len] → `intent` float32 [batch, dim+1], the intent at each
    row's [MASK] slot (the last slot for next-item rows, an inner one for gaps)."""
    model = model.to("cpu").eval()
    max_len = model.cfg.max_len
    example = torch.full((2, max_len), 1, dtype=torch.long)
    example[0, :3] = 0  # a padded row, so the traced graph keeps the attention-mask path
    example[0, -1] = example[1, max_len // 2] = model.cfg.n_indices - 1  # a next-item row and a gap row
    batch = torch.export.Dim("batch", min=1, max=65536)
    length = torch.export.Dim("length", min=1, max=max_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # "torchvision is not installed. Skipping torchvision::nms" and the like: it is not needed here
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        program = torch.onnx.export(
            _IntentOnly(model), (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"item_ids": {0: batch, 1: length}}, opset_version=OPSET, verbose=False,
        )
    program.save(str(path), external_data=False)
    return path
