"""The four query types over a bundle: encoder + Redis histories + Milvus search + popularity fallback.

Transport-free: the gRPC servicer maps messages onto these calls, and domain errors
(`InvalidQuery`, `UnknownItem`, `NotSupported`, store outages) onto status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seqrec.proto.v1 import common_pb2
from seqrec.services.ranker.catalog import Catalog
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.filters import build_expression
from seqrec.services.ranker.history_store import Event, RedisHistoryStore
from seqrec.services.ranker.publish import I2I_SUFFIX, item_to_item_vectors
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import Bundle
from seqrec.shared.json_api import MAX_TOP_K


def _display(display: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(display name, metadata) from a search hit's display record."""
    return display.get("display_name"), display.get("meta") or {}


class InvalidQuery(ValueError):
    """The request is well-formed protobuf but not a valid query (maps to INVALID_ARGUMENT)."""


class UnknownItem(LookupError):
    """A seed item the bundle does not know, with no text to fall back on (maps to NOT_FOUND)."""


class NotSupported(RuntimeError):
    """The query needs a component this deployment does not have (maps to FAILED_PRECONDITION)."""


@dataclass
class Recommendation:
    items: list[tuple[str, float, str | None, dict[str, Any]]]  # item_id, score, display name, metadata
    model_version: str
    fallback: int = common_pb2.FALLBACK_NONE
    unknown_items: list[str] = field(default_factory=list)
    sequence_length: int = 0


class Recommender:
    def __init__(self, bundle: Bundle, encoder: OnnxEncoder, items: MilvusItemStore, histories: RedisHistoryStore):
        self.bundle = bundle
        self.version = bundle.version
        self.vocab = bundle.vocab()
        self.catalog = Catalog(bundle, self.vocab)
        self.encoder = encoder
        self.items = items
        self.histories = histories
        self.default_top_k = bundle.top_k
        self.i2i_vectors = item_to_item_vectors(bundle.item_vectors())

    # ---- helpers -------------------------------------------------------------------------------
    def _top_k(self, requested: int) -> int:
        if requested < 0 or requested > MAX_TOP_K:
            raise InvalidQuery(f"top_k: must be between 1 and {MAX_TOP_K} (0 = default {self.default_top_k}), "
                               f"got {requested}")
        return requested or self.default_top_k

    def _filters(self, clauses: Sequence[common_pb2.FilterClause]) -> tuple[list[common_pb2.FilterClause], str]:
        """Validated clauses (FilterError names a bad one) and their Milvus expression."""
        return list(clauses), build_expression(clauses, self.catalog.schema)

    def _excluded(self, ids: Sequence[str]) -> set[int]:
        return {i for i in (self.vocab.get(x) for x in ids) if i is not None}

    def _popularity(self, top_k: int, clauses: Sequence[common_pb2.FilterClause], exclude: set[int],
                    unknown: list[str]) -> Recommendation:
        items = [(self.vocab.item_id(i), score, *self.catalog.display(i))
                 for i, score in self.catalog.popular(top_k, clauses, exclude)]
        return Recommendation(items, self.version, common_pb2.FALLBACK_POPULARITY, unknown, 0)

    def _from_history(self, history: list[int], top_k: int, clauses: Sequence[common_pb2.FilterClause],
                      expr: str, exclude: set[int], unknown: list[str]) -> Recommendation:
        """Encode the history, search item vectors by inner product; popularity when it is empty."""
        history = history[-(self.encoder.max_len - 1):]
        if not history:
            return self._popularity(top_k, clauses, exclude, unknown)
        intent = self.encoder.intents([history])
        hits = self.items.search(self.version, intent, top_k, expr, [sorted(exclude)])[0]
        items = [(item_id, score, *_display(display)) for _, score, item_id, display in hits]
        return Recommendation(items, self.version, common_pb2.FALLBACK_NONE, unknown, len(history))

    def _stored_history(self, user_id: str) -> tuple[list[int], list[str]]:
        entries = self.histories.read(user_id, self.encoder.max_len - 1)
        return self.vocab.encode(item for item, _ in entries)

    # ---- the four query types -----------------------------------------------------------------
    def user_to_item(self, user_id: str, clauses: Sequence[common_pb2.FilterClause], top_k: int,
                     exclude_seen: bool = True, exclude_ids: Sequence[str] = ()) -> Recommendation:
        if not user_id:
            raise InvalidQuery("user_id: required")
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        history, _ = self._stored_history(user_id)
        exclude = self._excluded(exclude_ids) | (set(history) if exclude_seen else set())
        return self._from_history(history, top_k, clauses, expr, exclude, [])

    def contextual(self, user_id: str, item_id: str, clauses: Sequence[common_pb2.FilterClause], top_k: int,
                   exclude_seen: bool = True, exclude_ids: Sequence[str] = ()) -> Recommendation:
        if not user_id or not item_id:
            raise InvalidQuery("user_id and item_id: both required for contextual")
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        history, _ = self._stored_history(user_id)
        current, unknown = self.vocab.encode([item_id])
        history = history + current
        exclude = self._excluded(exclude_ids) | (set(history) if exclude_seen else set())
        return self._from_history(history, top_k, clauses, expr, exclude, unknown)

    def sequential(self, session_items: Sequence[str], clauses: Sequence[common_pb2.FilterClause], top_k: int,
                   exclude_seen: bool = False, exclude_ids: Sequence[str] = ()) -> Recommendation:
        if not session_items:
            raise InvalidQuery("session_items: at least one item is required")
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        history, unknown = self.vocab.encode(session_items)
        exclude = self._excluded(exclude_ids) | (set(history) if exclude_seen else set())
        return self._from_history(history, top_k, clauses, expr, exclude, unknown)

    def item_to_item(self, item_id: str, item_text: str | None, clauses: Sequence[common_pb2.FilterClause],
                     top_k: int, exclude_ids: Sequence[str] = ()) -> Recommendation:
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        index = self.vocab.get(item_id) if item_id else None
        if index is None:
            if item_text:
                raise NotSupported("item_text: answering unknown items from their text needs the embedder, "
                                   "which this ranker is not configured with")
            raise UnknownItem(f"item_id: unknown item {item_id!r}; pass item_text to find items by content")
        exclude = self._excluded(exclude_ids) | {index}
        vector = self.i2i_vectors[index: index + 1]
        hits = self.items.search(self.version + I2I_SUFFIX, vector, top_k, expr, [sorted(exclude)])[0]
        items = [(hit_id, score, *_display(display)) for _, score, hit_id, display in hits]
        return Recommendation(items, self.version, common_pb2.FALLBACK_NONE, [], 1)

    # ---- events -------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> int:
        for n, event in enumerate(events):
            if not event.user_id or not event.item_id:
                raise InvalidQuery(f"events[{n}]: user_id and item_id are required")
            if event.timestamp_ms < 0:
                raise InvalidQuery(f"events[{n}].timestamp_ms: must be >= 0")
        return self.histories.append(events)

    def history(self, user_id: str, limit: int) -> list[tuple[str, int]]:
        if not user_id:
            raise InvalidQuery("user_id: required")
        if limit < 0:
            raise InvalidQuery("limit: must be >= 0")
        return self.histories.read(user_id, limit or self.histories.cap)

