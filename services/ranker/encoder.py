"""The bundle's ONNX encoder under ONNX Runtime: histories in, intent vectors out (no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from seqrec.shared.bundle import ENCODER, Bundle
from seqrec.shared.history import encode_histories


def pick_providers(preference: str = "auto") -> list[str]:
    """CUDA when asked for or (auto) when an NVIDIA device is present and the GPU build is installed; else CPU.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU, so `auto` also looks for
    the driver's device node before asking for it.
    """
    if preference not in ("auto", "cuda", "cpu"):
        raise ValueError(f"ONNX Runtime provider must be auto, cuda or cpu, got {preference!r}")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and (
        preference == "cuda" or (preference == "auto" and os.path.exists("/dev/nvidiactl")))
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class OnnxEncoder:
    """Runs `encoder.onnx`; rows are built by the same `encode_histories` the trainer evaluates with."""

    def __init__(self, bundle: Bundle, intra_op_threads: int = 0, provider: str = "auto"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle.file(ENCODER)), options, providers=pick_providers(provider))
        self.max_len = bundle.max_len
        self.mask_index = bundle.mask_index
        self.input_name = bundle.manifest.encoder.input
        self.output_name = bundle.manifest.encoder.output
        self.gap_filling = bundle.manifest.gap_filling

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def intents(self, histories: Sequence[Sequence[int]],
                following: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """float32 [len(histories), dim] intent vectors; score = intent · item_vector. With `following`, each
        row is a gap between its history and these items (bundles with `gap_filling` only)."""
        if following is not None and not self.gap_filling:
            raise ValueError("this bundle's encoder answers at the last slot only; retrain it for gap filling")
        ids = encode_histories(histories, self.max_len, self.mask_index, following=following)
        return self.session.run([self.output_name], {self.input_name: ids})[0]
