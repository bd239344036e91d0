"""Item text for the MiniLM embedder: one template shared by training, publishing and online upserts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384


class TextEmbedder(Protocol):
    """Anything that turns texts into L2-normalised float32 embeddings [len(texts), dim]."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    return str(value).strip()


def item_text(meta: Mapping[str, Any], columns: Sequence[str], display_name: str | None = None) -> str:
    """`name: …; title: …; genre: …` from the display name and the metadata columns, in column order.

    Missing or empty values are left out; an item with nothing to say has the empty text.
    """
    parts = [f"name: {display_name.strip()}"] if display_name and display_name.strip() else []
    for column in columns:
        value = meta.get(column)
        text = "" if value is None else _format(value)
        if text:
            parts.append(f"{column}: {text}")
    return "; ".join(parts)
