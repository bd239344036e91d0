"""Frozen MiniLM features of the catalog's item text, for the hybrid model."""

from __future__ import annotations

import logging
import os

import numpy as np
from tqdm.auto import tqdm

from seqrec.services.trainer.data import Interactions
from seqrec.shared.config import DataConfig
from seqrec.shared.text import TEXT_DIM, TextEmbedder, item_text

log = logging.getLogger(__name__)
EMBED_CHUNK = 256  # texts per embedder call (and per progress-bar step)
EMBEDDER_ENV = "SEQREC_EMBEDDER"  # host:port of an embedder service; unset → MiniLM in this process


def catalog_texts(data: Interactions, cfg: DataConfig) -> list[str]:
    """The text of every item index 1..n_items (empty when an item has no metadata)."""
    out = []
    for item in data.vocab.ids():
        info = data.items.get(item)
        out.append(item_text(info.meta, cfg.meta_cols, info.display_name) if info else "")
    return out


def default_embedder() -> TextEmbedder:
    """The embedder service named by SEQREC_EMBEDDER, else MiniLM loaded in this process."""
    target = os.environ.get(EMBEDDER_ENV, "").strip()
    if target:
        from seqrec.services.embedder.client import EmbedderClient

        log.info("embedding item text through the embedder service", extra={"target": target})
        return EmbedderClient(target, timeout=60.0)
    from seqrec.services.embedder.minilm import MiniLM

    return MiniLM()


def text_table(texts: list[str], embedder: TextEmbedder, progress: bool = True) -> np.ndarray:
    """[n_items + 2, 384] float32 rows aligned with model indices; padding, [MASK] and empty texts are zero."""
    table = np.zeros((len(texts) + 2, TEXT_DIM), dtype=np.float32)
    present = [n for n, text in enumerate(texts) if text.strip()]
    chunks = range(0, len(present), EMBED_CHUNK)
    for start in tqdm(chunks, desc="embedding item text", unit="chunk", disable=not progress, leave=False):
        rows = present[start:start + EMBED_CHUNK]
        table[np.asarray(rows) + 1] = embedder.embed([texts[n] for n in rows])
    log.info("embedded item text", extra={"items": len(present), "without_text": len(texts) - len(present)})
    return table
