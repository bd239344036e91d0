"""The bundle's catalog in memory: popularity order, display names and typed metadata columns.

Serves the popularity fallback (with filters evaluated on numpy columns, no vector search), the
display data of popularity answers, and the rows of bundle items a query needs beside its vector
search. Column values are typed exactly as the vector store types them (`typed_value`), so a filter
accepts the same items here as in Milvus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seqrec.proto.v1 import common_pb2
from seqrec.services.ranker.filters import typed_value
from seqrec.shared.bundle import ITEMS, Bundle
from seqrec.shared.json_api import from_metadata_value
from seqrec.shared.vocab import ItemVocab


class Catalog:
    def __init__(self, bundle: Bundle, vocab: ItemVocab):
        self.vocab = vocab
        self.schema: dict[str, str] = dict(bundle.manifest.metadata_schema)
        n = vocab.n_indices
        counts = bundle.popularity().astype(np.float64)
        counts[0] = counts[vocab.mask_index] = -1.0  # never recommend padding or [MASK]
        self.by_popularity = np.argsort(-counts[: vocab.mask_index], kind="stable")[: vocab.n_items]
        self.popularity_share = counts.clip(min=0) / max(counts.clip(min=0).sum(), 1.0)
        self.display_names: list[str | None] = [None] * n
        self.meta: list[dict[str, Any]] = [{} for _ in range(n)]
        self.columns = {col: np.full(n, None, dtype=object) for col in self.schema}
        if bundle.has(ITEMS):
            for row in bundle.iter_jsonl(ITEMS):
                index = vocab.get(row["item_id"])
                if index is None:
                    continue
                self.display_names[index] = row.get("display_name")
                self.meta[index] = row.get("meta") or {}
                for col, kind in self.schema.items():
                    self.columns[col][index] = typed_value(kind, self.meta[index].get(col))

    def display(self, index: int) -> tuple[str | None, dict[str, Any]]:
        return self.display_names[index], self.meta[index]

    def filter_mask(self, clauses: Sequence[common_pb2.FilterClause], indices: np.ndarray | None = None
                    ) -> np.ndarray:
        """Boolean mask of the items every (already validated) clause accepts: over all indices, or over
        `indices` (bundle item indices) in their order."""
        mask = np.ones(self.vocab.n_indices if indices is None else len(indices), dtype=bool)
        for clause in clauses:
            column = self.columns[clause.field.removeprefix("meta.")]
            if indices is not None:
                column = column[indices]
            op = clause.WhichOneof("op")
            if op == "equals":
                wanted = from_metadata_value(clause.equals)
                # types were checked against the schema, so == compares like with like (5 == 5.0 for doubles)
                mask &= np.fromiter((v is not None and v == wanted for v in column), dtype=bool, count=len(column))
            elif op == "any_of":
                wanted = {from_metadata_value(v) for v in clause.any_of.values}
                mask &= np.fromiter((v is not None and v in wanted for v in column), dtype=bool, count=len(column))
            else:
                numeric = np.array([np.nan if v is None or isinstance(v, bool) else float(v) for v in column])
                r = clause.range
                with np.errstate(invalid="ignore"):
                    ok = ~np.isnan(numeric)
                    if r.HasField("gte"):
                        ok &= numeric >= r.gte
                    if r.HasField("gt"):
                        ok &= numeric > r.gt
                    if r.HasField("lte"):
                        ok &= numeric <= r.lte
                    if r.HasField("lt"):
                        ok &= numeric < r.lt
                mask &= ok
        return mask

    def popular(self, top_k: int, clauses: Sequence[common_pb2.FilterClause] = (),
                exclude: set[int] | None = None) -> list[tuple[int, float]]:
        """The most popular items passing the filters: (index, popularity share)."""
        order = self.by_popularity
        if clauses:
            order = order[self.filter_mask(clauses)[order]]
        out: list[tuple[int, float]] = []
        for index in order.tolist():
            if exclude and index in exclude:
                continue
            out.append((index, float(self.popularity_share[index])))
            if len(out) == top_k:
                break
        return out
