"""Item vocabulary: external item ids (strings) to the model's integer indices.

Index 0 is padding, items take 1..n_items, and n_items + 1 is the [MASK] token, so the
embedding table has n_items + 2 rows and `item_vectors.npy` rows line up with indices.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

PAD_INDEX = 0


class ItemVocab:
    """Bidirectional map between external item ids and model indices."""

    def __init__(self, item_ids: Sequence[str]):
        self._ids: list[str] = [str(i) for i in item_ids]
        self._index: dict[str, int] = {item: n + 1 for n, item in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise ValueError("item ids in a vocabulary must be unique")

    @property
    def n_items(self) -> int:
        return len(self._ids)

    @property
    def mask_index(self) -> int:
        return self.n_items + 1

    @property
    def n_indices(self) -> int:
        """Rows of the embedding table: padding, items, [MASK]."""
        return self.n_items + 2

    def __len__(self) -> int:
        return self.n_items

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._index

    def index(self, item_id: str) -> int:
        """Index of a known item; KeyError for an unknown one."""
        return self._index[str(item_id)]

    def get(self, item_id: str) -> int | None:
        return self._index.get(str(item_id))

    def item_id(self, index: int) -> str:
        if not 1 <= index <= self.n_items:
            raise KeyError(f"index {index} is not an item (padding is 0, [MASK] is {self.mask_index})")
        return self._ids[index - 1]

    def ids(self) -> list[str]:
        """External ids in index order (index 1 first)."""
        return list(self._ids)

    def encode(self, item_ids: Iterable[str]) -> tuple[list[int], list[str]]:
        """Known items' indices in order, and the unknown ids that were skipped."""
        known: list[int] = []
        unknown: list[str] = []
        for item in item_ids:
            idx = self._index.get(str(item))
            if idx is None:
                unknown.append(str(item))
            else:
                known.append(idx)
        return known, unknown

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self._ids[int(i) - 1] for i in indices]

    def to_json(self) -> dict[str, object]:
        return {"pad_index": PAD_INDEX, "mask_index": self.mask_index, "items": self._ids}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        raw = json.loads(Path(path).read_text())
        vocab = cls(raw["items"])
        if raw.get("mask_index") != vocab.mask_index or raw.get("pad_index") != PAD_INDEX:
            raise ValueError(f"{path}: pad/mask indices do not match the item list")
        return vocab

    def item_array(self) -> np.ndarray:
        """External ids as an object array aligned with indices 1..n_items."""
        return np.asarray(self._ids, dtype=object)
