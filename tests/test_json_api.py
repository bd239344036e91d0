"""The JSON form of the API: the spec's payloads map onto typed requests; bad fields are named."""

import pytest

from seqrec.proto.v1 import common_pb2, ranker_pb2
from seqrec.shared.json_api import RequestError, parse_request, response_to_json

SPEC_PAYLOADS = [
    {"query_type": "item_to_item", "item_id": "item_1024",
     "item_text": "Optional description for day-zero cold start items",
     "filters": {"meta.brand": "Samsung"}, "top_k": 10},
    {"query_type": "user_to_item", "user_id": "user_777", "top_k": 5},
    {"query_type": "contextual", "user_id": "user_777", "item_id": "item_1024", "top_k": 10},
    {"query_type": "sequential", "session_items": ["item_1024", "item_89", "item_300"], "top_k": 10,
     "filters": {"meta.category": "Electronics", "meta.in_stock": True}},
]


@pytest.mark.parametrize("payload", SPEC_PAYLOADS, ids=lambda p: p["query_type"])
def test_spec_payloads_parse(payload):
    query_type, request = parse_request(payload)
    assert query_type == payload["query_type"]
    assert request.top_k == payload["top_k"]


def test_filters_become_typed_clauses():
    _, request = parse_request({"query_type": "sequential", "session_items": ["a"],
                                "filters": {"meta.category": "Electronics", "meta.in_stock": True,
                                            "meta.brand": ["A", "B"], "meta.price": {"gte": 10, "lt": 50.5},
                                            "meta.year": 1999}})
    clauses = {c.field: c for c in request.filters}
    assert clauses["meta.category"].equals.string_value == "Electronics"
    assert clauses["meta.in_stock"].equals.WhichOneof("kind") == "bool_value"
    assert [v.string_value for v in clauses["meta.brand"].any_of.values] == ["A", "B"]
    assert clauses["meta.price"].range.gte == 10 and clauses["meta.price"].range.lt == 50.5
    assert not clauses["meta.price"].range.HasField("lte")
    assert clauses["meta.year"].equals.WhichOneof("kind") == "int_value"


def test_exclude_seen_is_optional():
    _, request = parse_request({"query_type": "user_to_item", "user_id": "u"})
    assert not request.HasField("exclude_seen")
    _, request = parse_request({"query_type": "user_to_item", "user_id": "u", "exclude_seen": False})
    assert request.HasField("exclude_seen") and request.exclude_seen is False


@pytest.mark.parametrize("payload,field", [
    ([1, 2], "body"),
    ({"query_type": "nope"}, "query_type"),
    ({"user_id": "u"}, "query_type"),
    ({"query_type": "user_to_item"}, "user_id"),
    ({"query_type": "user_to_item", "user_id": "u", "colour": 1}, "colour"),
    ({"query_type": "user_to_item", "user_id": 7}, "user_id"),
    ({"query_type": "user_to_item", "user_id": "u", "top_k": 0}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u", "top_k": 1001}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u", "top_k": True}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u", "top_k": 2.5}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u", "exclude_seen": "yes"}, "exclude_seen"),
    ({"query_type": "contextual", "user_id": "u"}, "item_id"),
    ({"query_type": "sequential", "session_items": []}, "session_items"),
    ({"query_type": "sequential", "session_items": "abc"}, "session_items"),
    ({"query_type": "sequential", "session_items": ["a", 3]}, "session_items[1]"),
    ({"query_type": "sequential", "session_items": ["a"] * 1001}, "session_items"),
    ({"query_type": "item_to_item"}, "item_id"),
    ({"query_type": "item_to_item", "item_id": "x" * 513}, "item_id"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"brand": "x"}}, "filters.brand"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": "meta.x=1"}, "filters"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": {"gte": "1"}}}, "filters.meta.p.gte"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": {"between": 1}}}, "filters.meta.p"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": float("nan")}}, "filters.meta.p"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": []}}, "filters.meta.p"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": [{"x": 1}]}}, "filters.meta.p[0]"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": None}}, "filters.meta.p"),
    ({"query_type": "sequential", "session_items": ["a"], "filters": {"meta.p": 2**70}}, "filters.meta.p"),
])
def test_errors_name_the_field(payload, field):
    with pytest.raises(RequestError) as err:
        parse_request(payload)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_response_json_shape():
    response = ranker_pb2.RecommendResponse(
        items=[common_pb2.ScoredItem(item_id="a", score=1.5, display_name="A",
                                     meta={"in_stock": common_pb2.MetadataValue(bool_value=True)}),
               common_pb2.ScoredItem(item_id="b", score=0.25)],
        model_version="v1", fallback=common_pb2.FALLBACK_POPULARITY, unknown_items=["zz"], recommendation_id="r1")
    assert response_to_json(response) == {
        "items": [{"item_id": "a", "score": 1.5, "display_name": "A", "meta": {"in_stock": True}},
                  {"item_id": "b", "score": 0.25}],
        "model_version": "v1", "fallback": "popularity", "unknown_items": ["zz"], "recommendation_id": "r1"}
    assert response_to_json(ranker_pb2.RecommendResponse(model_version="v"))["fallback"] is None
