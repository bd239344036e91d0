"""Typed clients of the gateway's gRPC front door and of the ranker.

Both answer the five query types with the same methods and return `RecommendResponse` messages; every call has
a deadline (the client's `timeout`, or the call's), and a failed call raises `SeqrecError`. The ranker client
also stores events (`ingest_events`), reads histories and names the served model.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal, Self

import grpc

from seqrec.client.channel import Tls, open_channel
from seqrec.client.errors import SeqrecError
from seqrec.proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, ranker_pb2, ranker_pb2_grpc

DEFAULT_TIMEOUT_S = 2.0
Filters = Sequence[common_pb2.FilterClause]
EventTypeName = Literal["view", "click", "add_to_cart", "purchase"]
EVENT_TYPES: dict[str, int] = {"view": common_pb2.EVENT_TYPE_VIEW, "click": common_pb2.EVENT_TYPE_CLICK,
                               "add_to_cart": common_pb2.EVENT_TYPE_ADD_TO_CART,
                               "purchase": common_pb2.EVENT_TYPE_PURCHASE}


def interaction(user_id: str, item_id: str, *, at: datetime | int | None = None, event_id: str | None = None,
                recommendation_id: str = "", event_type: EventTypeName | None = None) -> common_pb2.Interaction:
    """One event: `at` is a timezone-aware datetime or milliseconds since the epoch (None: now, as the server
    receives it). It always gets an event id (a new UUID unless given), so a retried call never doubles it;
    `recommendation_id` is that of the response whose list led to it, for attribution."""
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("interaction: `at` must be timezone-aware (a naive datetime has no fixed instant)")
        at = round(at.timestamp() * 1000)
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ValueError(f"interaction: event_type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}")
    return common_pb2.Interaction(user_id=user_id, item_id=item_id, timestamp_ms=at or 0,
                                  event_id=event_id or uuid.uuid4().hex, recommendation_id=recommendation_id,
                                  event_type=EVENT_TYPES[event_type] if event_type else 0)


class _Client(ABC):
    """A channel with a default deadline; the five query types, sent by `_recommend`."""

    def __init__(self, target: str, *, tls: Tls | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, options: Sequence[tuple[str, Any]] = ()) -> None:
        if timeout <= 0:
            raise ValueError("timeout: must be positive seconds")
        self.timeout = timeout
        self.channel = open_channel(target, tls=tls, api_key=api_key, options=options)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, rpc: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return rpc(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise SeqrecError.from_rpc_error(error) from None

    @abstractmethod
    def _recommend(self, query_type: str, request: Any, timeout: float | None) -> ranker_pb2.RecommendResponse:
        """Send one query (`request`, the message of `query_type`) to the service."""

    def user_to_item(self, user_id: str, *, top_k: int = 0, filters: Filters = (), exclude_seen: bool = True,
                     exclude_item_ids: Sequence[str] = (), timeout: float | None = None
                     ) -> ranker_pb2.RecommendResponse:
        """Personalised recommendations from the user's stored history (popularity for an unknown user)."""
        return self._recommend("user_to_item", ranker_pb2.UserToItemRequest(
            user_id=user_id, top_k=top_k, filters=filters, exclude_seen=exclude_seen,
            exclude_item_ids=exclude_item_ids), timeout)

    def item_to_item(self, item_id: str, *, item_text: str | None = None, top_k: int = 0, filters: Filters = (),
                     exclude_item_ids: Sequence[str] = (), timeout: float | None = None
                     ) -> ranker_pb2.RecommendResponse:
        """Items like `item_id` ("more like this"); `item_text` describes an item the model does not know."""
        return self._recommend("item_to_item", ranker_pb2.ItemToItemRequest(
            item_id=item_id, item_text=item_text, top_k=top_k, filters=filters,
            exclude_item_ids=exclude_item_ids), timeout)

    def contextual(self, user_id: str, item_id: str, *, item_text: str | None = None, top_k: int = 0,
                   filters: Filters = (), exclude_seen: bool = True, exclude_item_ids: Sequence[str] = (),
                   timeout: float | None = None) -> ranker_pb2.RecommendResponse:
        """What this user wants next after the item being viewed now."""
        return self._recommend("contextual", ranker_pb2.ContextualRequest(
            user_id=user_id, item_id=item_id, item_text=item_text, top_k=top_k, filters=filters,
            exclude_seen=exclude_seen, exclude_item_ids=exclude_item_ids), timeout)

    def sequential(self, session_items: Sequence[str], *, top_k: int = 0, filters: Filters = (),
                   exclude_seen: bool = True, exclude_item_ids: Sequence[str] = (), timeout: float | None = None
                   ) -> ranker_pb2.RecommendResponse:
        """Recommendations from a session alone (oldest item first); nothing is stored."""
        return self._recommend("sequential", ranker_pb2.SequentialRequest(
            session_items=session_items, top_k=top_k, filters=filters, exclude_seen=exclude_seen,
            exclude_item_ids=exclude_item_ids), timeout)

    def gap(self, gap_position: int, *, user_id: str = "", session_items: Sequence[str] = (), top_k: int = 0,
            filters: Filters = (), exclude_seen: bool = True, exclude_item_ids: Sequence[str] = (),
            timeout: float | None = None) -> ranker_pb2.RecommendResponse:
        """The items that fit before `session_items[gap_position]` (or that index of the user's history)."""
        return self._recommend("gap", ranker_pb2.GapRequest(
            user_id=user_id, session_items=session_items, gap_position=gap_position, top_k=top_k, filters=filters,
            exclude_seen=exclude_seen, exclude_item_ids=exclude_item_ids), timeout)


class GatewayClient(_Client):
    """The gateway's gRPC front door (RecommendService): the queries, behind its API keys."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = gateway_pb2_grpc.RecommendServiceStub(self.channel)

    def _recommend(self, query_type: str, request: Any, timeout: float | None) -> ranker_pb2.RecommendResponse:
        query = gateway_pb2.RecommendRequest(**{query_type: request})
        return self._call(self._stub.Recommend, query, timeout)


class RankerClient(_Client):
    """The ranker (RankerService): the queries, events, histories and the served model."""

    _RPCS = {"user_to_item": "UserToItem", "item_to_item": "ItemToItem", "contextual": "Contextual",
             "sequential": "Sequential", "gap": "GapFill"}

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = ranker_pb2_grpc.RankerServiceStub(self.channel)

    def _recommend(self, query_type: str, request: Any, timeout: float | None) -> ranker_pb2.RecommendResponse:
        return self._call(getattr(self._stub, self._RPCS[query_type]), request, timeout)

    def ingest_events(self, events: Sequence[common_pb2.Interaction], *, timeout: float | None = None
                      ) -> ranker_pb2.IngestEventsResponse:
        """Store events in their users' histories (each in timestamp order). Build them with `interaction`:
        with event ids, a retry after a timeout applies nothing twice."""
        return self._call(self._stub.IngestEvents, ranker_pb2.IngestEventsRequest(events=events), timeout)

    def history(self, user_id: str, *, limit: int = 0, timeout: float | None = None
                ) -> ranker_pb2.GetHistoryResponse:
        """The user's stored history, oldest first (the newest `limit` events; 0: all)."""
        return self._call(self._stub.GetHistory, ranker_pb2.GetHistoryRequest(user_id=user_id, limit=limit),
                          timeout)

    def model_info(self, *, timeout: float | None = None) -> common_pb2.ModelInfo:
        """The served bundle: version, training metrics, metadata columns, example users and items."""
        return self._call(self._stub.GetModelInfo, common_pb2.GetModelInfoRequest(), timeout)

