"""Catalog items added or changed online (UpsertItems): text → vectors with the bundle's own projection.

A brand-new item's output vector is `[MiniLM(text), 1] @ text_projection`, exactly what the trainer
gives a catalog item without interactions; its item-to-item vector mixes that with the text
embedding the way the bundle's precomputed ones do. Rows go to Milvus (shared by every ranker
replica, durable), keyed by a primary key derived from the item id, so replicas agree without
coordination and repeating an upsert replaces the row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seqrec.shared.bundle import TEXT_EMBEDDINGS, TEXT_PROJECTION, Bundle
from seqrec.shared.similarity import item_to_item_vectors, text_only_vector
from seqrec.shared.vocab import ItemVocab

ONLINE_PK_BASE = 1 << 62  # bundle items use their model index (< n_indices); online-only items live above
MAX_UPSERT = 1000  # items per call
MAX_ID_BYTES = 2048
_KINDS = {"bool": (bool,), "int64": (int,), "double": (int, float), "string": (str,)}


class InvalidItem(ValueError):
    """An item UpsertItems cannot take (maps to INVALID_ARGUMENT); the message names the field."""


def online_pk(item_id: str) -> int:
    """A stable 63-bit primary key for an item the bundle does not know (the same on every replica)."""
    digest = int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big")
    return ONLINE_PK_BASE | (digest & (ONLINE_PK_BASE - 1))


@dataclass
class CatalogEntry:
    item_id: str
    text: str
    display_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def check_entry(n: int, entry: CatalogEntry, schema: dict[str, str]) -> None:
    """Refuse an entry with no id, no text, unknown metadata columns or values of the wrong type."""
    where = f"items[{n}]"
    if not entry.item_id or len(entry.item_id.encode()) > MAX_ID_BYTES:
        raise InvalidItem(f"{where}.item_id: required, at most {MAX_ID_BYTES} bytes")
    if not entry.text.strip():
        raise InvalidItem(f"{where}.text: required (no text and no metadata columns to build it from)")
    for column, value in entry.meta.items():
        kind = schema.get(column)
        if kind is None:
            raise InvalidItem(f"{where}.meta.{column}: not a metadata column of this bundle; known: {sorted(schema)}")
        if value is None:
            continue
        if isinstance(value, bool) != (kind == "bool") or not isinstance(value, _KINDS[kind]):
            raise InvalidItem(f"{where}.meta.{column}: expected {kind}, got {type(value).__name__}")
        if isinstance(value, float) and not np.isfinite(value):
            raise InvalidItem(f"{where}.meta.{column}: must be a finite number")


class TextVectorizer:
    """Vectors for items described by text, consistent with the bundle's trained vectors."""

    def __init__(self, bundle: Bundle, vocab: ItemVocab, item_vectors: np.ndarray):
        self.vocab = vocab
        self.projection = bundle.array(TEXT_PROJECTION)
        self.model_dim = bundle.model_dim  # leading item-vector columns used for item-to-item similarity
        self.text = bundle.array(TEXT_EMBEDDINGS)
        self.item_vectors = item_vectors

    def vectors(self, item_ids: list[str], text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(primary keys, output vectors, item-to-item vectors) for items with new text embeddings.

        A bundle item keeps its learned id part and swaps its text part; a new item is text only.
        """
        out = text_only_vector(text, self.projection)
        keys = np.empty(len(item_ids), dtype=np.int64)
        for row, item_id in enumerate(item_ids):
            index = self.vocab.get(item_id)
            if index is None:
                keys[row] = online_pk(item_id)
                continue
            keys[row] = index
            old = self.text[index: index + 1]
            old_part = text_only_vector(old, self.projection)[0] if np.any(old) else 0.0
            out[row] = self.item_vectors[index] - old_part + out[row]
        return keys, out.astype(np.float32), item_to_item_vectors(out, self.model_dim, text)

    def query_vector(self, text: np.ndarray) -> np.ndarray:
        """The item-to-item query vector [1, d] of an item known only by its text."""
        return item_to_item_vectors(text_only_vector(text, self.projection), self.model_dim, text)
