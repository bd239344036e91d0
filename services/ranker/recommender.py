"""The query types over a bundle: encoder + Redis histories + Milvus search + popularity fallback.

The spec's four predict the item after a sequence; `gap` predicts the item inside one, from both sides.

Transport-free: the gRPC servicer maps messages onto these calls, and domain errors
(`InvalidQuery`, `UnknownItem`, `NotSupported`, store outages) onto status codes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from seqrec.proto.v1 import common_pb2
from seqrec.services.embedder.client import EmbedderClient
from seqrec.services.ranker.catalog import Catalog
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.filters import build_expression
from seqrec.services.ranker.history_store import Event, HistoryStoreUnavailable, Ingested, RedisHistoryStore
from seqrec.services.ranker.metrics import RankerMetrics
from seqrec.services.ranker.online_items import (
    MAX_UPSERT,
    CatalogEntry,
    InvalidItem,
    TextVectorizer,
    check_entry,
    online_pk,
)
from seqrec.services.ranker.publish import I2I_SUFFIX, bundle_item_to_item_vectors
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import HISTORIES, REPORT_HTML, Bundle
from seqrec.shared.history import gap_window, split_at_gap
from seqrec.shared.json_api import MAX_EVENTS, MAX_ID_CHARS, MAX_LIST_ITEMS, MAX_TOP_K
from seqrec.shared.scoring import Scorer
from seqrec.shared.service_metrics import ServiceMetrics
from seqrec.shared.text import item_text


def _display(display: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(display name, metadata) from a search hit's display record."""
    return display.get("display_name"), display.get("meta") or {}


class InvalidQuery(ValueError):
    """The request is well-formed protobuf but not a valid query (maps to INVALID_ARGUMENT)."""


class UnknownItem(LookupError):
    """A seed item the bundle does not know, with no text to fall back on (maps to NOT_FOUND)."""


DEFAULT_FUTURE_TOLERANCE_S = 300.0  # clock skew allowed between callers and the ranker


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
    def __init__(self, bundle: Bundle, encoder: OnnxEncoder, items: MilvusItemStore, histories: RedisHistoryStore,
                 embedder: EmbedderClient | None = None, future_tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S,
                 metrics: ServiceMetrics | None = None):
        self.bundle = bundle
        self.metrics = metrics or RankerMetrics()  # the stages of each call are timed (the app's registry)
        self.future_tolerance_ms = int(future_tolerance_s * 1000)
        self.version = bundle.version
        self.vocab = bundle.vocab()
        self.catalog = Catalog(bundle, self.vocab)
        self.encoder = encoder
        self.items = items
        self.histories = histories
        self.embedder = embedder
        self.default_top_k = bundle.top_k
        self.scorer = Scorer.from_bundle(bundle)
        self.i2i_vectors = bundle_item_to_item_vectors(bundle, self.scorer.rows)
        self.text_vectors = TextVectorizer(bundle, self.vocab) if bundle.hybrid else None
        text = bundle.manifest.text
        self.text_columns: list[str] = list(text.columns) if text is not None else []
        self._example_users: list[str] | None = None

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
        """Primary keys of the given items: bundle indices, or the keys of items added online."""
        if len(ids) > MAX_LIST_ITEMS:
            raise InvalidQuery(f"exclude_item_ids: at most {MAX_LIST_ITEMS} items, got {len(ids)}")
        return {self.vocab.get(x) or online_pk(x) for x in ids if x}

    def _embed(self, texts: list[str], what: str) -> Any:
        """MiniLM embeddings through the embedder; NotSupported when this deployment cannot embed."""
        if self.text_vectors is None:
            raise NotSupported(f"{what}: bundle {self.version} was trained without item text (no metadata "
                               "columns), so it cannot place items by their text; retrain with --meta-cols")
        if self.embedder is None:
            raise NotSupported(f"{what}: this ranker has no embedder configured (set SEQREC_EMBEDDER)")
        return self.embedder.embed(texts)

    def _popularity(self, top_k: int, clauses: Sequence[common_pb2.FilterClause], exclude: set[int],
                    unknown: list[str]) -> Recommendation:
        items = [(self.vocab.item_id(i), score, *self.catalog.display(i))
                 for i, score in self.catalog.popular(top_k, clauses, exclude)]
        return Recommendation(items, self.version, common_pb2.FALLBACK_POPULARITY, unknown, 0)

    def _from_history(self, history: list[int], top_k: int, clauses: Sequence[common_pb2.FilterClause],
                      expr: str, exclude: set[int], unknown: list[str],
                      following: list[int] | None = None) -> Recommendation:
        """Encode the history, search item rows by inner product and merge in the bundle's sequence prior
        (`Scorer.merge`: the items it lifts are read from Milvus, filtered as the search is); popularity when the
        sequence is empty. With `following`, the history is what comes before a gap and `following` what comes
        after it: the encoder answers at the gap and the prior reads the transitions from both sides of it."""
        keep = self.encoder.max_len - 1
        if following is None:
            history = history[-keep:]
        else:
            history, following = map(list, gap_window(history, following, keep))
        if not history and not following:
            return self._popularity(top_k, clauses, exclude, unknown)
        with self.metrics.stage("encoder"):
            intent = self.encoder.intents([history], None if following is None else [following])
        limit = top_k + self.scorer.overfetch(history, exclude, following)
        with self.metrics.stage("milvus_search"):
            hits = self.items.search(self.version, intent, limit, expr, [sorted(exclude)])[0]
        hits = self.scorer.merge(history, intent, hits, top_k, limit, exclude,
                                 lambda indices: self._rows(indices, clauses, expr), following)
        items = [(item_id, score, *_display(display)) for _, score, item_id, display in hits]
        return Recommendation(items, self.version, common_pb2.FALLBACK_NONE, unknown,
                              len(history) + len(following or ()))

    def _rows(self, indices: list[int], clauses: Sequence[common_pb2.FilterClause], expr: str
              ) -> dict[int, tuple[np.ndarray, str, dict[str, Any]]]:
        """(row, item id, display) of the items that pass the filters, as the search reads them: bundle items
        from memory, items UpsertItems changed (recorded in Redis) or added from Milvus. Reading memory instead
        of querying Milvus keeps a query to one round trip to Milvus."""
        bundle_items = [i for i in indices if 1 <= i <= self.vocab.n_items]
        try:
            changed = self.histories.changed_items(self.version, bundle_items)
        except HistoryStoreUnavailable:
            changed = set(bundle_items)  # cannot tell which changed: read them all where changes land
        local = [i for i in bundle_items if i not in changed]
        local_keys = np.asarray(local, dtype=np.int64)
        out: dict[int, tuple[np.ndarray, str, dict[str, Any]]] = {}
        for index in local_keys[self.catalog.filter_mask(clauses, local_keys)].tolist():
            name, meta = self.catalog.display(index)
            out[index] = (self.scorer.rows[index], self.vocab.item_id(index), {"display_name": name, "meta": meta})
        remote = sorted(set(indices).difference(local))
        if remote:
            out.update(self.items.rows(self.version, remote, expr))
        return out

    def _stored_history(self, user_id: str) -> tuple[list[int], list[str]]:
        with self.metrics.stage("redis_history"):
            entries = self.histories.read(user_id, self.encoder.max_len - 1)
        return self.vocab.encode(item for item, _ in entries)

    # ---- the query types ------------------------------------------------------------------------
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
        if len(session_items) > MAX_LIST_ITEMS:  # the gateway's limit, enforced for gRPC callers too
            raise InvalidQuery(f"session_items: at most {MAX_LIST_ITEMS} items, got {len(session_items)}")
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        history, unknown = self.vocab.encode(session_items)
        exclude = self._excluded(exclude_ids) | (set(history) if exclude_seen else set())
        return self._from_history(history, top_k, clauses, expr, exclude, unknown)

    def item_to_item(self, item_id: str, item_text: str | None, clauses: Sequence[common_pb2.FilterClause],
                     top_k: int, exclude_ids: Sequence[str] = ()) -> Recommendation:
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        exclude = self._excluded([*exclude_ids, item_id])
        fallback, unknown = common_pb2.FALLBACK_NONE, []
        index = self.vocab.get(item_id) if item_id else None
        if index is not None:
            vector = self.i2i_vectors[index: index + 1]
        else:
            stored = self.items.get_vectors(self.version + I2I_SUFFIX, [online_pk(item_id)]) if item_id else {}
            if stored:  # an item added online
                vector = next(iter(stored.values()))[None, :]
            elif item_text is not None and item_text.strip():
                text = self._embed([item_text], "item_text")
                vector = self.text_vectors.query_vector(text)
                fallback, unknown = common_pb2.FALLBACK_CONTENT, [item_id] if item_id else []
            else:
                raise UnknownItem(f"item_id: unknown item {item_id!r}; pass item_text to find items by content")
        with self.metrics.stage("milvus_search"):
            hits = self.items.search(self.version + I2I_SUFFIX, vector, top_k, expr, [sorted(exclude)])[0]
        items = [(hit_id, score, *_display(display)) for _, score, hit_id, display in hits]
        return Recommendation(items, self.version, fallback, unknown, 1)

    def gap(self, user_id: str, session_items: Sequence[str], gap_position: int | None,
            clauses: Sequence[common_pb2.FilterClause], top_k: int, exclude_seen: bool = True,
            exclude_ids: Sequence[str] = ()) -> Recommendation:
        """The items that fit before `session_items[gap_position]` (or that index of the user's stored history),
        read from the items on both sides."""
        if bool(user_id) == bool(session_items):
            raise InvalidQuery("user_id: set exactly one of user_id and session_items for gap")
        if gap_position is None:
            raise InvalidQuery("gap_position: required for gap")
        if not self.encoder.gap_filling:
            raise NotSupported(f"gap: bundle {self.version} was trained by a seqrec without gap filling (its encoder "
                               "answers after the last item only); retrain it to serve gap queries")
        if len(session_items) > MAX_LIST_ITEMS:
            raise InvalidQuery(f"session_items: at most {MAX_LIST_ITEMS} items, got {len(session_items)}")
        top_k = self._top_k(top_k)
        clauses, expr = self._filters(clauses)
        sequence = list(session_items) if session_items else [
            item for item, _ in self.histories.read(user_id, self.histories.cap)]
        what = "session_items" if session_items else f"the {len(sequence)} stored events of user {user_id!r}"
        try:
            items_before, items_after = split_at_gap(sequence, gap_position, what)
        except ValueError as exc:
            raise InvalidQuery(str(exc)) from exc
        before, unknown = self.vocab.encode(items_before)
        after, unknown_after = self.vocab.encode(items_after)
        unknown = unknown + unknown_after if session_items else []
        exclude = self._excluded(exclude_ids) | (set(before) | set(after) if exclude_seen else set())
        return self._from_history(before, top_k, clauses, expr, exclude, unknown, following=after)

    # ---- catalog ------------------------------------------------------------------------------
    def upsert_items(self, entries: Sequence[CatalogEntry]) -> int:
        """Add or update items from their text and metadata; every query type sees them at once.

        Empty text is built from the metadata with the training template. Nothing is written
        unless every entry is valid and embedded.
        """
        if not entries:
            raise InvalidItem("items: at least one item is required")
        if len(entries) > MAX_UPSERT:
            raise InvalidItem(f"items: {len(entries)} items in one call; at most {MAX_UPSERT}")
        entries = [e if e.text.strip() else CatalogEntry(e.item_id, item_text(e.meta, self.text_columns,
                                                                              e.display_name), e.display_name, e.meta)
                   for e in entries]
        for n, entry in enumerate(entries):
            check_entry(n, entry, self.catalog.schema)
        latest = {e.item_id: e for e in entries}  # the last entry for an id wins
        entries = list(latest.values())
        text = self._embed([e.text for e in entries], "items")
        keys, vectors, i2i = self.text_vectors.vectors([e.item_id for e in entries], text)
        rows = dict(item_indices=keys, item_ids=[e.item_id for e in entries], metadata=[e.meta for e in entries],
                    metadata_schema=self.catalog.schema, display_names=[e.display_name for e in entries])
        # Recorded before Milvus changes, so no replica reads a changed item's old row from its bundle.
        self.histories.mark_changed_items(self.version, [k for k in keys if 1 <= k <= self.vocab.n_items])
        self.items.upsert_items(self.version, vectors, **rows)
        self.items.upsert_items(self.version + I2I_SUFFIX, i2i, **rows)
        return len(entries)

    # ---- events -------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> Ingested:
        """Apply the events (all valid, or none): timestamp 0 means now; a repeated event id is a duplicate."""
        if len(events) > MAX_EVENTS:
            raise InvalidQuery(f"events: at most {MAX_EVENTS} per call, got {len(events)}")
        now_ms = int(time.time() * 1000)
        latest = now_ms + self.future_tolerance_ms
        for n, event in enumerate(events):
            for name in ("user_id", "item_id"):
                value = getattr(event, name)
                if not value:
                    raise InvalidQuery(f"events[{n}].{name}: required")
                if len(value) > MAX_ID_CHARS:
                    raise InvalidQuery(f"events[{n}].{name}: longer than {MAX_ID_CHARS} characters")
            for name in ("event_id", "recommendation_id"):
                if len(getattr(event, name)) > MAX_ID_CHARS:
                    raise InvalidQuery(f"events[{n}].{name}: longer than {MAX_ID_CHARS} characters")
            if event.timestamp_ms < 0:
                raise InvalidQuery(f"events[{n}].timestamp_ms: must be >= 0")
            if event.timestamp_ms > latest:
                ahead = (event.timestamp_ms - now_ms) / 1000
                raise InvalidQuery(f"events[{n}].timestamp_ms: {ahead:,.0f} s in the future (more than the "
                                   f"{self.future_tolerance_ms / 1000:g} s allowed for clock skew; milliseconds "
                                   f"since the Unix epoch are expected)")
        return self.histories.append([e if e.timestamp_ms else replace(e, timestamp_ms=now_ms)
                                      for e in events])

    def history(self, user_id: str, limit: int) -> list[tuple[str, int]]:
        if not user_id:
            raise InvalidQuery("user_id: required")
        if limit < 0:
            raise InvalidQuery("limit: must be >= 0")
        return self.histories.read(user_id, limit or self.histories.cap)

    # ---- the bundle, for consoles ---------------------------------------------------------------
    def display_name(self, item_id: str) -> str | None:
        """The catalog's display name of a bundle item (None for unknown items and items added online)."""
        index = self.vocab.get(item_id)
        return None if index is None else self.catalog.display_names[index]

    def training_report(self) -> str:
        """The bundle's report.html ("" for a bundle built before reports were HTML)."""
        return self.bundle.file(REPORT_HTML).read_text(encoding="utf-8") if self.bundle.has(REPORT_HTML) else ""

    def example_users(self, n: int = 20, min_items: int = 3) -> list[str]:
        """The first `n` users of the bundle's training histories with at least `min_items` interactions."""
        if self._example_users is None:
            found = (row["user_id"] for row in self.bundle.iter_jsonl(HISTORIES) if len(row["items"]) >= min_items)
            self._example_users = list(itertools.islice(found, n))
        return self._example_users

