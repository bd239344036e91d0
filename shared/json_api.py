"""The JSON form of the inference API (SPEC.md section 4) mapped onto the typed protobuf RPCs.

One module for every JSON front end (the gateway, `seqrec query`): a payload is validated here,
field by field, and every error names the field (`RequestError.field`).
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.message import Message

from seqrec.proto.v1 import common_pb2, ranker_pb2

MAX_TOP_K = 1000
MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 10_000
MAX_LIST_ITEMS = 1000
MAX_FILTERS = 64
MAX_EVENTS = 1000  # events per ingestion call, JSON and gRPC
RANGE_OPS = ("gte", "gt", "lte", "lt")

# query_type → (request message, RPC method name, {field: kind})
_ID = "id"
_FIELDS: dict[str, tuple[type[Message], str, dict[str, str]]] = {
    "item_to_item": (ranker_pb2.ItemToItemRequest, "ItemToItem",
                     {"item_id": _ID, "item_text": "text", "filters": "filters", "top_k": "top_k",
                      "exclude_item_ids": "ids"}),
    "user_to_item": (ranker_pb2.UserToItemRequest, "UserToItem",
                     {"user_id": _ID, "filters": "filters", "top_k": "top_k", "exclude_seen": "bool",
                      "exclude_item_ids": "ids"}),
    "contextual": (ranker_pb2.ContextualRequest, "Contextual",
                   {"user_id": _ID, "item_id": _ID, "item_text": "text", "filters": "filters", "top_k": "top_k",
                    "exclude_seen": "bool", "exclude_item_ids": "ids"}),
    "sequential": (ranker_pb2.SequentialRequest, "Sequential",
                   {"session_items": "ids", "filters": "filters", "top_k": "top_k", "exclude_seen": "bool",
                    "exclude_item_ids": "ids"}),
    "gap": (ranker_pb2.GapRequest, "GapFill",
            {"user_id": _ID, "session_items": "ids", "gap_position": "position", "filters": "filters",
             "top_k": "top_k", "exclude_seen": "bool", "exclude_item_ids": "ids"}),
}
_REQUIRED = {"item_to_item": (), "user_to_item": ("user_id",), "contextual": ("user_id", "item_id"),
             "sequential": ("session_items",), "gap": ("gap_position",)}
MAX_POSITION = 2**31 - 1  # gap_position is an int32
QUERY_TYPES = tuple(_FIELDS)
FALLBACK_NAMES = {common_pb2.FALLBACK_NONE: None, common_pb2.FALLBACK_POPULARITY: "popularity",
                  common_pb2.FALLBACK_CONTENT: "content"}
#: Interaction.event_type as JSON and the event log name it: "view", "click", ...; "" is unspecified.
EVENT_TYPE_NAMES = {value: "" if value == common_pb2.EVENT_TYPE_UNSPECIFIED
                    else name.removeprefix("EVENT_TYPE_").lower() for name, value in common_pb2.EventType.items()}
EVENT_TYPE_VALUES = {name: value for value, name in EVENT_TYPE_NAMES.items()}


class RequestError(ValueError):
    """A JSON request that does not fit the API; `field` is the offending field's path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def rpc_name(query_type: str) -> str:
    return _FIELDS[query_type][1]


def request_fields(query_type: str) -> dict[str, str]:
    """The JSON fields a query type accepts (besides query_type) and their kinds:
    "id", "text", "ids", "top_k", "position", "bool" or "filters" (front ends generate their schemas from this)."""
    return dict(_FIELDS[query_type][2])


def required_fields(query_type: str) -> tuple[str, ...]:
    """The fields a query type cannot do without (item_to_item needs item_id or item_text instead)."""
    return _REQUIRED[query_type]


def _utf8(field: str, value: str) -> str:
    """Refuse strings UTF-8 cannot carry (lone surrogates are valid JSON escapes but not text)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(field, "not valid Unicode text (lone surrogate)") from exc
    return value


def _string(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"expected a string, got {type(value).__name__}")
    _utf8(field, value)
    if not value.strip():
        raise RequestError(field, "must not be empty")
    if len(value) > limit:
        raise RequestError(field, f"longer than {limit} characters")
    return value


def _id_list(field: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise RequestError(field, f"expected a list of strings, got {type(value).__name__}")
    if len(value) > MAX_LIST_ITEMS:
        raise RequestError(field, f"more than {MAX_LIST_ITEMS} entries")
    return [_string(f"{field}[{i}]", v, MAX_ID_CHARS) for i, v in enumerate(value)]


def _top_k(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"expected an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_TOP_K:
        raise RequestError(field, f"must be between 1 and {MAX_TOP_K}, got {value}")
    return value


def _position(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_POSITION:
        raise RequestError(field, f"must be between 0 and the sequence's length, got {value}")
    return value


def to_metadata_value(field: str, value: Any) -> common_pb2.MetadataValue:
    """A JSON scalar as a typed MetadataValue (bool before int: bool is an int in Python)."""
    if isinstance(value, bool):
        return common_pb2.MetadataValue(bool_value=value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise RequestError(field, "integer out of the 64-bit range")
        return common_pb2.MetadataValue(int_value=value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(field, "numbers must be finite")
        return common_pb2.MetadataValue(double_value=value)
    if isinstance(value, str):
        if len(value) > MAX_ID_CHARS:
            raise RequestError(field, f"longer than {MAX_ID_CHARS} characters")
        return common_pb2.MetadataValue(string_value=_utf8(field, value))
    raise RequestError(field, f"expected a string, number or boolean, got {type(value).__name__}")


def from_metadata_value(value: common_pb2.MetadataValue) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [from_metadata_value(v) for v in value.list_value.values]
    return None if kind is None else getattr(value, kind)


def _finite(field: str, value: Any) -> float:
    """A JSON number as a finite float (an integer beyond the float range is refused, not overflowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(field, "expected a finite number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise RequestError(field, "expected a finite number (this one is beyond the float range)") from exc
    if not math.isfinite(number):
        raise RequestError(field, "expected a finite number")
    return number


def parse_filters(field: str, value: Any) -> list[common_pb2.FilterClause]:
    """`{"meta.col": scalar | [any of] | {"gte": .., "lt": ..}}` → FilterClause messages."""
    if not isinstance(value, dict):
        raise RequestError(field, f"expected an object of meta.<column> filters, got {type(value).__name__}")
    if len(value) > MAX_FILTERS:
        raise RequestError(field, f"more than {MAX_FILTERS} filters")
    clauses = []
    for key, cond in value.items():
        path = f"{field}.{key}"
        if not isinstance(key, str) or not key.startswith("meta.") or len(key) <= len("meta."):
            raise RequestError(path, "filter keys are meta.<column>")
        _utf8(path, key)
        if isinstance(cond, list):
            if not cond or len(cond) > MAX_LIST_ITEMS:
                raise RequestError(path, f"a list filter needs 1 to {MAX_LIST_ITEMS} values")
            values = [to_metadata_value(f"{path}[{i}]", v) for i, v in enumerate(cond)]
            clauses.append(common_pb2.FilterClause(field=key, any_of=common_pb2.ValueList(values=values)))
        elif isinstance(cond, dict):
            unknown = sorted(set(cond) - set(RANGE_OPS))
            if unknown or not cond:
                raise RequestError(path, f"a range takes {list(RANGE_OPS)}, got {sorted(cond)}")
            bounds = {}
            for op, bound in cond.items():
                bounds[op] = _finite(f"{path}.{op}", bound)
            clauses.append(common_pb2.FilterClause(field=key, range=common_pb2.NumericRange(**bounds)))
        else:
            clauses.append(common_pb2.FilterClause(field=key, equals=to_metadata_value(path, cond)))
    return clauses


def parse_request(payload: Any) -> tuple[str, Message]:
    """Validate a JSON payload and build the typed request; RequestError names the bad field."""
    if not isinstance(payload, dict):
        raise RequestError("body", "expected a JSON object")
    query_type = payload.get("query_type")
    if not isinstance(query_type, str) or query_type not in _FIELDS:  # an object or list is unhashable
        raise RequestError("query_type", f"must be one of {list(QUERY_TYPES)}, got {query_type!r}")
    message_type, _, fields = _FIELDS[query_type]
    unknown = sorted(set(payload) - set(fields) - {"query_type"})
    if unknown:
        raise RequestError(unknown[0] or '""', f"unknown field for {query_type}; allowed: {sorted(fields)}")
    for name in _REQUIRED[query_type]:
        if payload.get(name) in (None, "", []):
            raise RequestError(name, f"required for {query_type}")
    if query_type == "item_to_item" and not payload.get("item_id") and not payload.get("item_text"):
        raise RequestError("item_id", "item_to_item needs item_id (or item_text for a new item)")
    if query_type == "gap" and bool(payload.get("user_id")) == bool(payload.get("session_items")):
        raise RequestError("user_id", "gap needs exactly one of user_id (the gap is in their stored history) and "
                                      "session_items")
    kwargs: dict[str, Any] = {}
    for name, value in payload.items():
        if name == "query_type" or value is None:
            continue
        kind = fields[name]
        if kind == _ID:
            kwargs[name] = _string(name, value, MAX_ID_CHARS)
        elif kind == "text":
            kwargs[name] = _string(name, value, MAX_TEXT_CHARS)
        elif kind == "ids":
            kwargs[name] = _id_list(name, value)
        elif kind == "top_k":
            kwargs[name] = _top_k(name, value)
        elif kind == "position":
            kwargs[name] = _position(name, value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise RequestError(name, f"expected true or false, got {type(value).__name__}")
            kwargs[name] = value
        else:
            kwargs[name] = parse_filters(name, value)
    return query_type, message_type(**kwargs)


def response_to_json(response: ranker_pb2.RecommendResponse) -> dict[str, Any]:
    """The JSON answer: items as objects with item_id, score and, when known, display_name and meta."""
    items = []
    for item in response.items:
        entry: dict[str, Any] = {"item_id": item.item_id, "score": round(float(item.score), 6)}
        if item.display_name:
            entry["display_name"] = item.display_name
        if item.meta:
            entry["meta"] = {k: from_metadata_value(v) for k, v in item.meta.items()}
        items.append(entry)
    out: dict[str, Any] = {"items": items, "model_version": response.model_version,
                           "fallback": FALLBACK_NAMES.get(response.fallback),
                           "recommendation_id": response.recommendation_id}
    if response.unknown_items:
        out["unknown_items"] = list(response.unknown_items)
    return out
