"""Item-to-item vectors: unit rows whose inner product is the similarity `item_to_item` ranks by."""

from __future__ import annotations

import numpy as np

from seqrec.shared.manifest import Layout


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def item_to_item_vectors(item_vectors: np.ndarray, layout: Layout, text: np.ndarray | None = None) -> np.ndarray:
    """From the model columns of item rows (`layout.model_cols`: the output item vectors) and, for hybrid
    models, text embeddings [n, 384].

    Id-only: cosine of the model's output item vectors. Hybrid: the mean of that cosine and the MiniLM
    cosine of the two texts (both halves unit length, scaled by 1/sqrt 2); a row without text keeps its
    model half at unit length, so every row has norm 1.
    """
    model = unit_rows(item_vectors[:, layout.model_cols])
    if text is None:
        return model
    has_text = np.linalg.norm(text, axis=1) > 0
    scale = np.where(has_text, np.float32(np.sqrt(0.5)), np.float32(1.0))[:, None]
    return np.ascontiguousarray(np.concatenate([model * scale, unit_rows(text) * scale], axis=1), dtype=np.float32)
