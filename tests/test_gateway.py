"""The gateway for real: a trained bundle published into redis-server and `milvus-lite server`, a real
ranker on loopback, and the gateway's HTTP API (in process and as `seqrec serve gateway`) and gRPC
front door in front of it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter, ValidationError

from seqrec.proto.v1 import gateway_pb2, gateway_pb2_grpc, ranker_pb2, ranker_pb2_grpc
from seqrec.services.gateway.errors import upstream_error_response
from seqrec.services.gateway.grpc_front import GrpcFrontDoor
from seqrec.services.gateway.http_app import create_app
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.services.gateway.models import QUERY_MODELS, RecommendRequest
from seqrec.services.gateway.settings import GatewaySettings
from seqrec.services.gateway.validation import pydantic_field
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.server import RankerApp, RankerSettings
from seqrec.shared.error_details import details_of, rich_status
from seqrec.shared.json_api import (
    QUERY_TYPES,
    RequestError,
    parse_request,
    request_fields,
    required_fields,
    rpc_name,
)
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env, SettingsError

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KEYS = ("key-one-0123456789", "key-two-abcdefghij")

# The spec's four example payloads (SPEC.md section 4) on ids of the test bundle: items s{series}e{episode},
# users u{n}, metadata columns genre (series % 3 → drama, comedy, docs) and in_stock (odd episodes).
SPEC_PAYLOADS = [
    {"query_type": "item_to_item", "item_id": "s3e2", "item_text": "Optional description for day-zero cold start items",
     "filters": {"meta.genre": "drama"}, "top_k": 10},
    {"query_type": "user_to_item", "user_id": "u7", "top_k": 5},
    {"query_type": "contextual", "user_id": "u7", "item_id": "s3e2", "top_k": 10},
    {"query_type": "sequential", "session_items": ["s4e0", "s4e1", "s4e2"], "top_k": 10,
     "filters": {"meta.genre": "comedy", "meta.in_stock": True}},
    {"query_type": "gap", "session_items": ["s4e0", "s4e1", "s4e3"], "gap_position": 2, "top_k": 5,
     "filters": {"meta.genre": "comedy"}},
]


def _settings(ranker: str, **env: str) -> GatewaySettings:
    base = {"SEQREC_RANKER": ranker, "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "SEQREC_HEALTH_INTERVAL_S": "0.2"}
    return GatewaySettings.from_env(Env({**base, **env}))


def _wait_health(channel: grpc.Channel, service: str, wanted: int, timeout: float = 15.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status != wanted:
        assert time.monotonic() < deadline, f"{service or 'server'} health never became {wanted}"
        time.sleep(0.1)


@contextlib.contextmanager
def serving_ranker(bundle: Path, redis_url: str, milvus_uri: str) -> Iterator[str]:
    """A real ranker serving `bundle` (published first) on a loopback port, once SERVING; yields its address."""
    publish(bundle, redis_url, milvus_uri, progress=False)
    app = RankerApp(RankerSettings.from_env(Env({
        "SEQREC_BUNDLE": str(bundle), "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{free_port()}", "REDIS_URL": redis_url,
        "MILVUS_URI": milvus_uri, "SEQREC_HEALTH_INTERVAL_S": "0.2"})))
    app.start()
    try:
        address = f"127.0.0.1:{app.port}"
        with grpc.insecure_channel(address) as channel:
            _wait_health(channel, "seqrec.proto.v1.RankerService", SERVING)
        yield address
    finally:
        app.stop(0)


@pytest.fixture(scope="module")
def ranker(trained_bundle, redis_server, milvus_server):
    """A real ranker serving the published test bundle on a loopback port; yields its address."""
    with serving_ranker(trained_bundle[0], f"redis://{redis_server.address}/0", milvus_server) as address:
        yield address


@pytest.fixture(scope="module")
def ranker_stub(ranker):
    with grpc.insecure_channel(ranker) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


@pytest.fixture(scope="module")
def client(ranker):
    with TestClient(create_app(_settings(ranker))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def front_door(ranker):
    """The gRPC front door in front of the real ranker; yields (stub, channel)."""
    door = GrpcFrontDoor(_settings(ranker), GatewayMetrics())
    door.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{door.port}")
    _wait_health(channel, "seqrec.proto.v1.RecommendService", SERVING)
    yield gateway_pb2_grpc.RecommendServiceStub(channel), channel
    channel.close()
    door.stop(0)


def _error(response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


# ---- the JSON API against the real ranker ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", SPEC_PAYLOADS, ids=lambda p: p["query_type"])
def test_spec_payloads(client, ranker_stub, payload):
    response = client.post("/v1/recommend", json=payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query_type"] == payload["query_type"] and answer["model_version"]
    assert len(answer["items"]) == payload["top_k"]
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["display_name"].startswith("Series ") and set(item["meta"]) == {"genre", "in_stock"}
               for item in answer["items"])
    for column, wanted in ((k.removeprefix("meta."), v) for k, v in payload.get("filters", {}).items()):
        assert all(item["meta"][column] == wanted for item in answer["items"])
    # exactly the ranker's own answer to the typed request
    query_type, request = parse_request(payload)
    direct = getattr(ranker_stub, rpc_name(query_type))(request, timeout=10)
    assert [item["item_id"] for item in answer["items"]] == [i.item_id for i in direct.items]


def test_gap_finds_the_missing_episode(client):
    answer = client.post("/v1/recommend", json={"query_type": "gap", "session_items": ["s4e0", "s4e1", "s4e3", "s4e4"],
                                                "gap_position": 2, "top_k": 3}).json()
    assert answer["items"][0]["item_id"] == "s4e2" and answer["fallback"] is None


def test_sequential_predicts_the_next_episode(client):
    answer = client.post("/v1/recommend", json=SPEC_PAYLOADS[3]).json()
    assert "s4e3" in [item["item_id"] for item in answer["items"][:3]] and answer["fallback"] is None
    partly_unknown = client.post("/v1/recommend", json={"query_type": "sequential", "top_k": 3,
                                                        "session_items": ["s4e0", "nope", "s4e1"]}).json()
    assert partly_unknown["unknown_items"] == ["nope"]


def test_events_then_user_to_item_changes(client):
    query = {"query_type": "user_to_item", "user_id": "gateway-fresh-user", "top_k": 3}
    before = client.post("/v1/recommend", json=query).json()
    assert before["fallback"] == "popularity"
    events = [{"user_id": "gateway-fresh-user", "item_id": f"s9e{e}", "timestamp_ms": 1_000 + e} for e in (2, 0, 1)]
    ingested = client.post("/v1/events", json={"events": events})
    assert ingested.status_code == 200 and ingested.json() == {"accepted": 3, "rejected": 0, "duplicates": 0}
    after = client.post("/v1/recommend", json=query).json()
    assert after["fallback"] is None and "s9e3" in [item["item_id"] for item in after["items"]]
    assert not {"s9e0", "s9e1", "s9e2"} & {item["item_id"] for item in after["items"]}  # exclude_seen default


def test_a_retried_events_request_with_ids_is_applied_once(client):
    events = [{"user_id": "gateway-retry", "item_id": "s3e1", "timestamp_ms": 5_000, "event_id": "ev-1"},
              {"user_id": "gateway-retry", "item_id": "s3e0", "timestamp_ms": 4_000, "event_id": "ev-0"}]
    assert client.post("/v1/events", json={"events": events}).json()["duplicates"] == 0
    assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 2, "rejected": 0,
                                                                         "duplicates": 2}
    history = client.get("/v1/history", params={"user_id": "gateway-retry"}).json()
    assert [entry["item_id"] for entry in history["items"]] == ["s3e0", "s3e1"]


def test_a_clicked_recommendation_is_attributed_through_the_gateway(client):
    listed = client.post("/v1/recommend", json={"query_type": "sequential", "session_items": ["s3e0"], "top_k": 3})
    answer = listed.json()
    assert len(answer["recommendation_id"]) == 32  # a fresh id per response
    click = {"user_id": "gateway-clicker", "item_id": answer["items"][0]["item_id"],
             "recommendation_id": answer["recommendation_id"], "event_type": "click"}
    assert client.post("/v1/events", json={"events": [click]}).json()["accepted"] == 1
    wrong = client.post("/v1/events", json={"events": [{**click, "event_type": "stare"}]})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "events[0].event_type", wrong.text


def test_an_event_far_in_the_future_is_a_400_naming_it(client):
    future = {"user_id": "gateway-future", "item_id": "s3e1", "timestamp_ms": 4_102_444_800_000}  # 2100
    answer = client.post("/v1/events", json={"events": [future]})
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "events[0].timestamp_ms", answer.text


@pytest.mark.parametrize("body,field", [
    ({"events": []}, "events"),
    ({"events": [{"user_id": "u1", "item_id": "s1e1"}] * 1001}, "events"),
    ({"events": [{"user_id": "u1", "item_id": "s1e1"}, {"item_id": "s1e2"}]}, "events[1].user_id"),
    ({"events": [{"user_id": "u1", "item_id": "s1e1", "timestamp_ms": "now"}]}, "events[0].timestamp_ms"),
    ({"events": [{"user_id": "u1", "item_id": "s1e1", "timestamp_ms": -5}]}, "events[0].timestamp_ms"),
    ({"events": [{"user_id": "u1", "item_id": "s1e1", "rating": 5}]}, "events[0].rating"),
    ({"evnts": []}, "evnts"),
])
def test_bad_events_are_refused_naming_the_field(client, body, field):
    response = client.post("/v1/events", json=body)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid_argument" and error["field"] == field


def test_filters(client):
    base = {"query_type": "sequential", "session_items": ["s4e1"], "top_k": 10}
    any_of = client.post("/v1/recommend", json={**base, "filters": {"meta.genre": ["docs", "comedy"]}}).json()
    assert len(any_of["items"]) == 10 and {i["meta"]["genre"] for i in any_of["items"]} <= {"docs", "comedy"}
    drama_in_stock = client.post("/v1/recommend", json={
        "query_type": "user_to_item", "user_id": "u7", "top_k": 10,
        "filters": {"meta.genre": "drama", "meta.in_stock": True}}).json()
    assert all(i["meta"] == {"genre": "drama", "in_stock": True} for i in drama_in_stock["items"])
    hostile = client.post("/v1/recommend", json={**base, "filters": {"meta.genre": 'drama" or m_genre != "'}})
    assert hostile.status_code == 200 and hostile.json()["items"] == []
    unknown_column = client.post("/v1/recommend", json={**base, "filters": {"meta.brand": "Samsung"}})
    assert unknown_column.status_code == 400  # the ranker's INVALID_ARGUMENT: this bundle has no brand column
    assert _error(unknown_column)["field"].startswith("filters") and "brand" in unknown_column.text


# ---- error mapping ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload,field", [
    ({"query_type": "user_to_item", "user_id": "u7", "colour": "red"}, "colour"),
    ({"query_type": "sequential", "session_items": ["s4e1"], "item_id": "s4e2"}, "item_id"),
    ({"query_type": "user_to_item", "user_id": "u7", "top_k": "5"}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u7", "top_k": 5.0}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u7", "top_k": True}, "top_k"),
    ({"query_type": "user_to_item", "user_id": 7}, "user_id"),
    ({"query_type": "user_to_item", "user_id": "u7", "exclude_seen": "yes"}, "exclude_seen"),
    ({"query_type": "sequential", "session_items": "s4e1"}, "session_items"),
    ({"query_type": "sequential", "session_items": ["s4e1", 3]}, "session_items[1]"),
    ({"query_type": "sequential", "session_items": ["s4e1"], "filters": {"genre": "drama"}}, "filters.genre"),
    ({"query_type": "sequential", "session_items": ["s4e1"], "filters": {"meta.genre": {"gte": "a"}}},
     "filters.meta.genre.gte"),
    ({"query_type": "sequential", "session_items": ["s4e1"], "filters": {"meta.genre": {"above": 1}}},
     "filters.meta.genre"),
    ({"query_type": "user_to_item", "user_id": "u7", "top_k": 0}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "u7", "top_k": 1001}, "top_k"),
    ({"query_type": "user_to_item", "user_id": "  "}, "user_id"),
    ({"query_type": "user_to_item"}, "user_id"),
    ({"query_type": "contextual", "user_id": "u7"}, "item_id"),
    ({"query_type": "item_to_item", "top_k": 3}, "item_id"),
    ({"query_type": "gap", "session_items": ["s4e1", "s4e3"]}, "gap_position"),
    ({"query_type": "gap", "session_items": ["s4e1", "s4e3"], "gap_position": -1}, "gap_position"),
    ({"query_type": "gap", "session_items": ["s4e1", "s4e3"], "gap_position": "1"}, "gap_position"),
    ({"query_type": "gap", "session_items": ["s4e1", "s4e3"], "gap_position": 3}, "gap_position"),  # the ranker's
    ({"query_type": "gap", "user_id": "u7", "session_items": ["s4e1"], "gap_position": 1}, "user_id"),
    ({"query_type": "gap", "gap_position": 0}, "user_id"),
    ({"query_type": "next_best"}, "query_type"),
    ({"user_id": "u7"}, "query_type"),
    ([{"query_type": "user_to_item", "user_id": "u7"}], "body"),
])
def test_invalid_requests_are_400_naming_the_field(client, payload, field):
    response = client.post("/v1/recommend", json=payload)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["code"] == "invalid_argument" and error["field"] == field and error["message"]


def test_malformed_bodies(client):
    not_json = client.post("/v1/recommend", content=b'{"query_type": ', headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and _error(not_json)["field"] == "body"
    form = client.post("/v1/recommend", content=b"query_type=sequential",
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and _error(form)["code"] == "unsupported_media_type"
    wrong_method = client.get("/v1/recommend")
    assert wrong_method.status_code == 405 and _error(wrong_method)["code"] == "method_not_allowed"
    assert client.get("/nowhere").status_code == 404


def test_unknown_item_is_404(client):
    response = client.post("/v1/recommend", json={"query_type": "item_to_item", "item_id": "brand-new", "top_k": 3})
    assert response.status_code == 404
    error = _error(response)
    assert error["code"] == "not_found" and error["field"] == "item_id" and "brand-new" in error["message"]


def test_text_without_an_embedder_is_409(client):
    response = client.post("/v1/recommend", json={"query_type": "item_to_item", "item_id": "brand-new",
                                                  "item_text": "a new drama series", "top_k": 3})
    assert response.status_code == 409
    assert _error(response)["code"] == "failed_precondition" and "embedder" in response.text


def test_deadline_is_504(ranker):
    with TestClient(create_app(_settings(ranker, SEQREC_DEADLINE_S="0.000001"))) as client:
        response = client.post("/v1/recommend", json=SPEC_PAYLOADS[1])
    assert response.status_code == 504 and _error(response)["code"] == "deadline_exceeded"


@pytest.mark.parametrize("code,status", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.UNAUTHENTICATED, 401),
    (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.FAILED_PRECONDITION, 409),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429), (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.INTERNAL, 502), (grpc.StatusCode.UNKNOWN, 502),
    (grpc.StatusCode.DATA_LOSS, 502),
])
def test_status_code_mapping(code, status, caplog):
    typed = details_of(FailedCall(code, "top_k: boom"))  # what a seqrec server attaches to this refusal
    response = upstream_error_response("Sequential", code, "top_k: boom", 2.0, "rid-1", typed)
    assert response.status_code == status
    error = json.loads(response.body)["error"]
    assert error["code"] == (code.name.lower() if status != 502 else "upstream_error")
    if status == 502:  # the ranker's details stay in the logs, under the incident id
        assert error["incident"] and "boom" not in error["message"]
        assert any(getattr(r, "incident", None) == error["incident"] for r in caplog.records)
    if status in (429, 503):
        assert response.headers["retry-after"] == "1"
    if status == 400:
        assert error["field"] == "top_k"
        # the field comes from the BadRequest detail, not from the message text
        untyped = json.loads(upstream_error_response("Sequential", code, "top_k: boom", 2.0, "rid-1").body)
        assert "field" not in untyped["error"]


class FailedCall(grpc.RpcError):
    """A failed call as a client sees it: code, message and the trailers a seqrec server sends."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.status = rich_status(code, message)

    def trailing_metadata(self):
        return self.status.trailing_metadata


def test_ranker_down_is_503_and_not_ready():
    with TestClient(create_app(_settings(f"127.0.0.1:{free_port()}"))) as client:
        response = client.post("/v1/recommend", json=SPEC_PAYLOADS[1])
        assert response.status_code == 503 and _error(response)["code"] == "unavailable"
        assert response.headers["retry-after"] == "1"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "ranker unreachable" in ready.json()["reason"]
        assert client.get("/healthz").status_code == 200


def test_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_body_size_limit(ranker):
    with TestClient(create_app(_settings(ranker, SEQREC_MAX_REQUEST_BYTES="2048"))) as client:
        big = {"query_type": "sequential", "session_items": [f"s{i % 30}e{i % 8}" for i in range(400)]}
        declared = client.post("/v1/recommend", json=big)
        assert declared.status_code == 413 and _error(declared)["code"] == "payload_too_large"
        streamed = client.post("/v1/recommend", content=iter([json.dumps(big).encode()[:1500]] * 3),
                               headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert streamed.status_code == 413
        small = {"query_type": "sequential", "session_items": ["s4e1"], "top_k": 2}
        assert client.post("/v1/recommend", json=small).status_code == 200


def test_api_keys(ranker, caplog):
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(_settings(ranker, SEQREC_API_KEYS=",".join(KEYS)))) as client:
        payload = SPEC_PAYLOADS[1]
        missing = client.post("/v1/recommend", json=payload)
        assert missing.status_code == 401 and _error(missing)["code"] == "unauthenticated"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/v1/recommend", json=payload, headers={"X-API-Key": KEYS[0][:-1]}).status_code == 401
        assert client.post("/v1/recommend", json=payload, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post("/v1/recommend", json=payload, headers={"X-API-Key": KEYS[0]}).status_code == 200
        assert client.post("/v1/recommend", json=payload,
                           headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": KEYS[1]}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        schema = client.get("/openapi.json").json()  # the API's description and its pages are open
        assert "ApiKeyHeader" in schema["components"]["securitySchemes"]
        assert client.get("/docs").status_code == 200 and client.get("/docs-assets/swagger-ui.css").status_code == 200
    logged = " ".join(json.dumps(record.__dict__, default=str) for record in caplog.records)
    assert "unauthenticated request" in logged and not any(key in logged for key in KEYS)


@pytest.mark.parametrize("query_type", [{}, [], ["user_to_item"], 3, None])
def test_a_query_type_of_the_wrong_json_type_is_a_400_naming_it(ranker, query_type):
    """Found by schemathesis's coverage phase: an object where the string belongs answered 500."""
    with TestClient(create_app(_settings(ranker))) as client:
        answer = client.post("/v1/recommend", json={"query_type": query_type, "user_id": "u", "top_k": 5})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == "query_type"


def test_metrics_count_requests_by_query_type_and_status(ranker):
    with TestClient(create_app(_settings(ranker))) as client:
        for _ in range(2):
            assert client.post("/v1/recommend", json=SPEC_PAYLOADS[3]).status_code == 200
        assert client.post("/v1/recommend", json={**SPEC_PAYLOADS[1], "top_k": 0}).status_code == 400
        assert client.post("/v1/recommend", json={"query_type": "bogus"}).status_code == 400
        text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    recommend = {"path": "/v1/recommend"}
    assert value("seqrec_gateway_http_requests_total", **recommend, query_type="sequential", status="200") == 2
    assert value("seqrec_gateway_http_requests_total", **recommend, query_type="user_to_item", status="400") == 1
    assert value("seqrec_gateway_http_requests_total", **recommend, query_type="invalid", status="400") == 1
    assert value("seqrec_gateway_http_request_duration_seconds_count", **recommend, query_type="sequential",
                 status="200") == 2
    assert value("seqrec_gateway_ranker_calls_total", rpc="Sequential", code="OK") == 2


def test_openapi_and_docs(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/recommend"]["post"]
    assert "422" not in operation["responses"] and {"400", "404", "503", "504"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == set(QUERY_TYPES)
    assert body["schema"]["discriminator"]["propertyName"] == "query_type"
    assert {"/v1/events", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("page, script", [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_docs_pages_load_nothing_from_the_network(client, page, script):
    """Swagger UI and ReDoc work offline: every script, stylesheet and icon the page names is served here."""
    html = client.get(page).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert urls and not [u for u in urls if "//" in u]  # no absolute or protocol-relative URL: no CDN
    assert any(u.endswith(script) for u in urls) and "fonts.googleapis" not in html
    for url in urls:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 0, url


def test_request_id_is_echoed(client):
    response = client.post("/v1/recommend", json=SPEC_PAYLOADS[1], headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


# ---- the pydantic models and json_api agree ---------------------------------------------------------------------


@pytest.mark.parametrize("query_type", QUERY_TYPES)
def test_models_match_json_api_fields(query_type):
    model = QUERY_MODELS[query_type]
    assert set(model.model_fields) - {"query_type"} == set(request_fields(query_type))
    required = {name for name, f in model.model_fields.items() if f.is_required()} - {"query_type"}
    assert required == set(required_fields(query_type))


AGREEMENT_CORPUS = [
    *SPEC_PAYLOADS,
    {"query_type": "sequential", "session_items": ["a"], "exclude_seen": False, "exclude_item_ids": ["b"],
     "filters": {"meta.year": {"gte": 1990, "lt": 2000.5}, "meta.tags": ["x", 2, True], "meta.price": 9.5}},
    {"query_type": "contextual", "user_id": "u", "item_id": "i", "item_text": "t", "exclude_seen": True},
    {"query_type": "item_to_item", "item_id": "i", "top_k": None},
    {"query_type": "user_to_item", "user_id": "u", "top_k": "5"},
    {"query_type": "user_to_item", "user_id": "u", "top_k": 5.5},
    {"query_type": "user_to_item", "user_id": "u", "top_k": 1001},
    {"query_type": "user_to_item", "user_id": "u", "exclude_seen": 1},
    {"query_type": "user_to_item", "user_id": "u", "session_items": ["a"]},
    {"query_type": "sequential", "session_items": [1]},
    {"query_type": "sequential", "session_items": ["a"], "filters": {"category": "x"}},
    {"query_type": "sequential", "session_items": ["a"], "filters": {"meta.x": {"gte": True}}},
    {"query_type": "sequential", "session_items": ["a"], "filters": {"meta.x": [[1]]}},
    {"query_type": "sequential", "session_items": ["a"], "filters": []},
    {"query_type": "contextual", "user_id": "u"},
    {"query_type": "gap", "session_items": ["a", "b"], "gap_position": 1, "exclude_seen": False},
    {"query_type": "gap", "user_id": "u", "gap_position": 0, "filters": {"meta.x": 1}},
    {"query_type": "gap", "user_id": "u", "gap_position": -1},
    {"query_type": "gap", "user_id": "u", "gap_position": True},
    {"query_type": "gap", "user_id": "u"},
    {"query_type": "unknown"},
    {},
]


@pytest.mark.parametrize("payload", AGREEMENT_CORPUS)
def test_models_and_json_api_agree(payload):
    """Both accept or both refuse (naming the same field); what the model accepts maps to the same proto."""
    adapter = TypeAdapter(RecommendRequest)
    try:
        expected = parse_request(payload)
    except RequestError as exc:
        with pytest.raises(ValidationError) as err:
            adapter.validate_python(payload)
        def top(field: str) -> str:
            return field.split(".")[0].split("[")[0]

        assert top(pydantic_field(err.value.errors()[0], payload)) == top(exc.field)
        return
    model = adapter.validate_python(payload)
    assert parse_request(model.model_dump(exclude_unset=True)) == expected


# ---- the gRPC front door ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", SPEC_PAYLOADS, ids=lambda p: p["query_type"])
def test_grpc_front_door_answers_each_query_type(front_door, ranker_stub, payload):
    stub, _ = front_door
    query_type, request = parse_request(payload)
    answer = stub.Recommend(gateway_pb2.RecommendRequest(**{query_type: request}), timeout=10)
    direct = getattr(ranker_stub, rpc_name(query_type))(request, timeout=10)
    # every list served gets its own recommendation id; the rest of the answer is the ranker's
    assert answer.recommendation_id and answer.recommendation_id != direct.recommendation_id
    answer.ClearField("recommendation_id")
    direct.ClearField("recommendation_id")
    assert answer == direct and len(answer.items) == payload["top_k"]


def test_grpc_front_door_errors(front_door):
    stub, _ = front_door
    for request, code, words in (
        (gateway_pb2.RecommendRequest(), grpc.StatusCode.INVALID_ARGUMENT, "query"),
        (gateway_pb2.RecommendRequest(sequential=ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=1001)),
         grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        (gateway_pb2.RecommendRequest(item_to_item=ranker_pb2.ItemToItemRequest(item_id="brand-new")),
         grpc.StatusCode.NOT_FOUND, "item_id"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(request, timeout=10)
        assert err.value.code() == code and words in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # the caller's deadline is passed on
        stub.Recommend(gateway_pb2.RecommendRequest(user_to_item=ranker_pb2.UserToItemRequest(user_id="u7")),
                       timeout=0.000001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_front_door_api_keys_and_ranker_down(ranker):
    door = GrpcFrontDoor(_settings(ranker, SEQREC_API_KEYS=",".join(KEYS)), GatewayMetrics())
    door.start()
    request = gateway_pb2.RecommendRequest(user_to_item=ranker_pb2.UserToItemRequest(user_id="u7", top_k=2))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{door.port}") as channel:
            _wait_health(channel, "", SERVING)  # health needs no key
            stub = gateway_pb2_grpc.RecommendServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(stub.Recommend(request, timeout=10, metadata=[("x-api-key", KEYS[0])]).items) == 2
            bearer = [("authorization", f"Bearer {KEYS[1]}")]
            assert len(stub.Recommend(request, timeout=10, metadata=bearer).items) == 2
    finally:
        door.stop(0)
    down = GrpcFrontDoor(_settings(f"127.0.0.1:{free_port()}"), GatewayMetrics())
    down.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{down.port}") as channel:
            _wait_health(channel, "seqrec.proto.v1.RecommendService", NOT_SERVING)
            with pytest.raises(grpc.RpcError) as err:
                gateway_pb2_grpc.RecommendServiceStub(channel).Recommend(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        down.stop(0)


# ---- settings and the process ------------------------------------------------------------------------------------


def test_settings():
    defaults = GatewaySettings.from_env(Env({}))
    assert (defaults.http_address, defaults.grpc_address, defaults.ranker) == (
        "127.0.0.1:8080", "127.0.0.1:50050", "127.0.0.1:50051")
    assert defaults.max_request_bytes == 1_048_576 and defaults.deadline_s == 2.0 and defaults.api_keys == ()
    assert GatewaySettings.from_env(Env({"SEQREC_GATEWAY_GRPC_ADDRESS": ""})).grpc_address == ""
    assert GatewaySettings.from_env(Env({"SEQREC_API_KEYS": f" {KEYS[0]}, ,{KEYS[1]} "})).api_keys == KEYS
    for env, message in (
        ({"SEQREC_DEADLINE_S": "soon"}, "SEQREC_DEADLINE_S: expected a number"),
        ({"SEQREC_DEADLINE_S": "0"}, "SEQREC_DEADLINE_S: must be greater than 0"),
        ({"SEQREC_GATEWAY_ADDRESS": "8080"}, "SEQREC_GATEWAY_ADDRESS: expected host:port"),
        ({"SEQREC_GATEWAY_GRPC_ADDRESS": "grpc"}, "SEQREC_GATEWAY_GRPC_ADDRESS: expected host:port"),
        ({"SEQREC_RANKER": "ranker"}, "SEQREC_RANKER: expected host:port"),
        ({"SEQREC_MAX_REQUEST_BYTES": "1MB"}, "SEQREC_MAX_REQUEST_BYTES: expected an integer"),
        ({"SEQREC_API_KEYS": "short"}, "SEQREC_API_KEYS: each key"),
    ):
        with pytest.raises(SettingsError, match=message):
            GatewaySettings.from_env(Env(env))


def _http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_gateway_subprocess_stops_cleanly_on_sigterm(ranker):
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{http_port}", "SEQREC_RANKER": ranker,
           "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}", "SEQREC_SHUTDOWN_GRACE_S": "2",
           "SEQREC_HEALTH_INTERVAL_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "gateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait_http(proc, f"{base}/healthz")
        assert _http("GET", f"{base}/readyz") == (200, {"status": "ready", "reason": "ok"})
        status, answer = _http("POST", f"{base}/v1/recommend", SPEC_PAYLOADS[3])
        assert status == 200 and "s4e3" in [item["item_id"] for item in answer["items"]]
        status, answer = _http("POST", f"{base}/v1/recommend", {**SPEC_PAYLOADS[3], "top_k": -1})
        assert status == 400 and answer["error"]["field"] == "top_k"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            _wait_health(channel, "", SERVING)
            reply = gateway_pb2_grpc.RecommendServiceStub(channel).Recommend(
                gateway_pb2.RecommendRequest(sequential=ranker_pb2.SequentialRequest(session_items=["s4e0"], top_k=2)),
                timeout=10)
            assert len(reply.items) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        messages = {entry["msg"] for entry in logs}
        assert {"gateway listening", "shutting down", "Application shutdown complete.", "stopped"} <= messages
        assert any(entry["msg"] == "request" and entry.get("status") == 400 for entry in logs)
    finally:
        proc.kill()
        proc.wait()


def _wait_http(proc: subprocess.Popen, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if _http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.2)


def test_serve_gateway_without_grpc_and_ranker_stops_on_sigint():
    http_port = free_port()
    env = {**os.environ, "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{http_port}", "SEQREC_GATEWAY_GRPC_ADDRESS": "",
           "SEQREC_RANKER": f"127.0.0.1:{free_port()}", "SEQREC_SHUTDOWN_GRACE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "gateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(proc, f"http://127.0.0.1:{http_port}/healthz")
        status, body = _http("GET", f"http://127.0.0.1:{http_port}/readyz")
        assert status == 503 and body["status"] == "not_ready"
        with socket.socket() as taken:  # a second gateway on the same port fails to start, with exit 1
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            env2 = {**env, "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{taken.getsockname()[1]}"}
            second = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "serve", "gateway"], env=env2,
                                    capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "gateway cannot start" in second.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        messages = [json.loads(line)["msg"] for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert "Application shutdown complete." in messages and messages[-1] == "stopped"
        assert not any("Traceback" in m for m in messages)
    finally:
        proc.kill()
        proc.wait()


def test_serve_gateway_refuses_bad_settings():
    env = {**os.environ, "SEQREC_DEADLINE_S": "soon"}
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "serve", "gateway"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "SEQREC_DEADLINE_S: expected a number" in proc.stderr


def test_ingest_reaches_the_ranker_history(client, ranker_stub):
    events = [{"user_id": "gateway-history-user", "item_id": "s2e1"}]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 1
    history = ranker_stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id="gateway-history-user"), timeout=5)
    assert list(history.item_ids) == ["s2e1"] and history.timestamps_ms[0] > 1_600_000_000_000  # 0 means now
