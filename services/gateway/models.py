"""Pydantic models of the JSON API, for validation with strict types and for the OpenAPI document.

The recommendation queries are generated from `seqrec.shared.json_api` (the field table that
`parse_request` enforces), so the HTTP schema and the JSON → protobuf mapping cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, FiniteFloat, Tag, create_model

from seqrec.shared.json_api import (
    MAX_EVENTS,
    MAX_FILTERS,
    MAX_ID_CHARS,
    MAX_LIST_ITEMS,
    MAX_POSITION,
    MAX_TEXT_CHARS,
    MAX_TOP_K,
    QUERY_TYPES,
    request_fields,
    required_fields,
)


class StrictModel(BaseModel):
    """Unknown fields and loosely typed values (e.g. "5" for 5, 1 for true) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Scalar = Union[str, bool, int, FiniteFloat]  # noqa: UP007 - a runtime type expression


class NumericRange(StrictModel):
    """A numeric range; unset bounds are open."""

    gte: FiniteFloat | None = Field(None, description="inclusive lower bound")
    gt: FiniteFloat | None = Field(None, description="exclusive lower bound")
    lte: FiniteFloat | None = Field(None, description="inclusive upper bound")
    lt: FiniteFloat | None = Field(None, description="exclusive upper bound")


def _filter_kind(value: Any) -> str:
    if isinstance(value, dict | NumericRange):
        return "range"
    return "any_of" if isinstance(value, list) else "equals"


FilterCondition = Annotated[
    Union[  # noqa: UP007
        Annotated[Scalar, Tag("equals")],
        Annotated[list[Scalar], Tag("any_of"), Field(min_length=1, max_length=MAX_LIST_ITEMS)],
        Annotated[NumericRange, Tag("range")],
    ],
    Discriminator(_filter_kind),
]
Filters = Annotated[
    dict[Annotated[str, Field(pattern=r"^meta\..+", max_length=MAX_ID_CHARS)], FilterCondition],
    Field(max_length=MAX_FILTERS, description=(
        'Item metadata filters, combined with AND: "meta.<column>": a value (equality), a list (any of) '
        'or {"gte", "gt", "lte", "lt"} (numeric range).'),
        examples=[{"meta.genre": "drama", "meta.in_stock": True}]),
]

# the type of each field kind of json_api's field table
KIND_TYPES: dict[str, Any] = {
    "id": Identifier,
    "text": Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)],
    "ids": Annotated[list[Identifier], Field(max_length=MAX_LIST_ITEMS)],
    "top_k": Annotated[int, Field(ge=1, le=MAX_TOP_K)],
    "position": Annotated[int, Field(ge=0, le=MAX_POSITION)],
    "bool": bool,
    "filters": Filters,
}

FIELD_DOCS = {
    "item_id": "The seed item (item_to_item) or the item being viewed now (contextual).",
    "item_text": "Text describing item_id, used when the model does not know the item (zero-day cold start).",
    "user_id": "The user, as in the user column of the training data (gap: the gap is in their stored history).",
    "session_items": "The session's items, oldest first; the last one is the current item (gap: the sequence that "
                     "holds the gap).",
    "gap_position": "Where the gap sits: before the item at this 0-based index of the sequence (0: before the first "
                    "item, the sequence's length: after the last).",
    "top_k": "Number of results (default: the model's, 10).",
    "exclude_seen": "Exclude items the user (or session) already interacted with; default true for user_to_item, "
                    "contextual and gap (the items around the gap), false for sequential.",
    "exclude_item_ids": "Items never to return.",
}

QUERY_DOCS = {
    "item_to_item": 'Items similar to a seed item ("more like this"); needs item_id or item_text.',
    "user_to_item": "Personalised homepage from the user's stored history; unknown user → global popularity.",
    "contextual": "The user's history followed by the current item: what this user wants next after it.",
    "sequential": "Strictly from the given session (guests, real-time intent), oldest first.",
    "gap": "The items that fit in one gap of a sequence (session_items, or user_id's stored history), read from both "
           "sides by the bidirectional model: what fits between two episodes, the missing item of a basket.",
}

SPEC_EXAMPLES = {
    "item_to_item": {"query_type": "item_to_item", "item_id": "item_1024",
                     "item_text": "Optional description for day-zero cold start items",
                     "filters": {"meta.brand": "Samsung"}, "top_k": 10},
    "user_to_item": {"query_type": "user_to_item", "user_id": "user_777", "top_k": 5},
    "contextual": {"query_type": "contextual", "user_id": "user_777", "item_id": "item_1024", "top_k": 10},
    "sequential": {"query_type": "sequential", "session_items": ["item_1024", "item_89", "item_300"], "top_k": 10,
                   "filters": {"meta.category": "Electronics", "meta.in_stock": True}},
    "gap": {"query_type": "gap", "session_items": ["item_1024", "item_89", "item_300"], "gap_position": 2,
            "top_k": 10},
}


def _class_name(query_type: str) -> str:
    return "".join(part.title() for part in query_type.split("_")) + "Query"


def query_model(query_type: str) -> type[BaseModel]:
    """The request model of one query type, built from json_api's field table."""
    required = set(required_fields(query_type))
    fields: dict[str, Any] = {"query_type": (Literal[query_type], Field(description="The query type."))}
    for name, kind in request_fields(query_type).items():
        annotation = KIND_TYPES[kind]
        description = FIELD_DOCS.get(name)
        if name in required:
            fields[name] = (annotation, Field(description=description))
        else:
            fields[name] = (annotation | None, Field(None, description=description))
    config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [SPEC_EXAMPLES[query_type]]},
                        title=_class_name(query_type))
    return create_model(_class_name(query_type), __config__=config, __doc__=QUERY_DOCS[query_type], **fields)


QUERY_MODELS: dict[str, type[BaseModel]] = {qt: query_model(qt) for qt in QUERY_TYPES}
ItemToItemQuery = QUERY_MODELS["item_to_item"]
UserToItemQuery = QUERY_MODELS["user_to_item"]
ContextualQuery = QUERY_MODELS["contextual"]
SequentialQuery = QUERY_MODELS["sequential"]
GapQuery = QUERY_MODELS["gap"]

AnyQuery = Union[ItemToItemQuery, UserToItemQuery, ContextualQuery, SequentialQuery, GapQuery]  # noqa: UP007
RecommendRequest = Annotated[AnyQuery, Field(discriminator="query_type")]  # the body of POST /v1/recommend


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="Relevance; higher is better, comparable within one response only.")
    display_name: str | None = Field(None, description="Human-readable label, where known.")
    meta: dict[str, Any] | None = Field(None, description="Item metadata by column, where known.")


class RecommendResponse(BaseModel):
    query_type: Literal["item_to_item", "user_to_item", "contextual", "sequential", "gap"]
    items: list[ScoredItem] = Field(description="Best first, at most top_k.")
    model_version: str = Field(description="The bundle version that answered.")
    fallback: Literal["popularity", "content"] | None = Field(
        description="Set when the personalised model did not serve the request (e.g. unknown user → popularity).")
    unknown_items: list[str] | None = Field(None, description="Requested item ids the model does not know (skipped).")
    recommendation_id: str = Field(description="Unique per response: send it back on the events the list leads to "
                                               "(events[].recommendation_id), so they are attributed to it.")


class Event(StrictModel):
    """One interaction."""

    user_id: Identifier
    item_id: Identifier
    timestamp_ms: int = Field(0, ge=0, le=2**63 - 1,
                              description="Milliseconds since the Unix epoch (UTC); 0 or absent means now. More "
                                          "than the ranker's tolerance (300 s by default) in the future is refused.")
    event_id: str = Field("", max_length=MAX_ID_CHARS,
                          description="Unique per user (a UUID is). A repeated id is acknowledged as a duplicate "
                                      "and not applied again (for 24 h by default), so retries are safe.")
    recommendation_id: str = Field("", max_length=MAX_ID_CHARS,
                                   description="The recommendation_id of the response whose list led to this "
                                               "event, for attribution (hit rate per model version).")
    event_type: Literal["view", "click", "add_to_cart", "purchase"] | None = Field(
        None, description="What kind of interaction this is; absent means not given.")


class EventsRequest(StrictModel):
    """Interactions to append to the users' histories (at most 1000 per request)."""

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"events": [{"user_id": "user_777", "item_id": "item_1024", "timestamp_ms": 1767225600000,
                     "event_id": "3f2b8c1e-5a7d-4c1b-9e0f-2d6a8b4c7e91",
                     "recommendation_id": "9d3c0f7a2b6e4f1a8c5d7e9b0a1c2d3e", "event_type": "click"}]}]})


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events acknowledged: applied now, or applied before (see duplicates).")
    rejected: int = Field(description="Always 0: an invalid event fails the whole request with a 400 naming it.")
    duplicates: int = Field(description="Of the accepted, those whose event_id had been applied already.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. invalid_argument, not_found, unavailable.")
    message: str
    field: str | None = Field(None, description="The offending request field, e.g. top_k or filters.meta.genre.")
    incident: str | None = Field(None, description="Quote it to the operators: it is in the gateway's logs.")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
