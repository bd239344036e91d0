"""Catalog items added or changed online (UpsertItems): text → rows through the scoring contract.

Rows come from `shared.scoring.item_rows`, the function the trainer's export calls: a brand-new item is
built like a catalog item without interactions (no id part, new and unseen); a bundle item keeps its id
part and its flags and takes the new text (a warm item that had no text does not become a new one). Its
item-to-item vector mixes the row with the text embedding the way the bundle's precomputed ones do.
Rows go to Milvus (shared by every ranker replica, durable), keyed by a primary key derived from the item
id, so replicas agree without coordination and repeating an upsert replaces the row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seqrec.shared.bundle import Bundle
from seqrec.shared.scoring import NEW_ITEM, UNSEEN, ItemParts, item_rows
from seqrec.shared.similarity import item_to_item_vectors
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
    """Rows for items described by text, built exactly as the bundle's own rows were."""

    def __init__(self, bundle: Bundle, vocab: ItemVocab):
        self.vocab = vocab
        self.parts = ItemParts.from_bundle(bundle)

    def _rows(self, indices: list[int | None], text: np.ndarray) -> np.ndarray:
        """Rows of items with new text: bundle items (an index) keep their id part and flags, new ones (None)
        have no id part and are new and unseen."""
        parts = self.parts
        id_rows = np.zeros((len(indices), parts.layout.id_width), dtype=np.float32)
        flags = np.full(len(indices), NEW_ITEM | UNSEEN, dtype=np.uint8)
        for row, index in enumerate(indices):
            if index is not None:
                id_rows[row], flags[row] = parts.id_rows[index], parts.flags[index]
        return item_rows(parts.layout, id_rows, flags, text, parts.head, parts.exposure_boost)

    def vectors(self, item_ids: list[str], text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(primary keys, rows, item-to-item vectors) for items with new text embeddings."""
        indices = [self.vocab.get(item_id) for item_id in item_ids]
        keys = np.array([online_pk(i) if n is None else n for i, n in zip(item_ids, indices, strict=True)],
                        dtype=np.int64)
        rows = self._rows(indices, text)
        return keys, rows, item_to_item_vectors(rows, self.parts.layout, text)

    def query_vector(self, text: np.ndarray) -> np.ndarray:
        """The item-to-item query vector [1, d] of an item known only by its text."""
        return item_to_item_vectors(self._rows([None], text), self.parts.layout, text)
