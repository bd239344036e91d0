"""The HTTP JSON API (FastAPI): POST /v1/recommend and /v1/events onto the ranker's typed RPCs, probes,
Prometheus metrics, the OpenAPI document and its pages (/docs, /redoc, served offline), and the web
console (/ui, console.py).

Validation: pydantic (strict types, unknown fields refused) then `json_api.parse_request`, whose
messages name the field; every invalid argument is 400 with `{"error": {"code": "invalid_argument",
"field": ..., "message": ...}}`. Ranker statuses map to HTTP as in `errors.py`.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from seqrec.proto.v1 import common_pb2, ranker_pb2
from seqrec.services.gateway.auth import ApiKeys
from seqrec.services.gateway.console import add_console
from seqrec.services.gateway.docs_pages import add_docs_pages
from seqrec.services.gateway.errors import error_response, ranker_answer
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.services.gateway.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from seqrec.services.gateway.models import (
    QUERY_DOCS,
    SPEC_EXAMPLES,
    AnyQuery,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    RecommendResponse,
)
from seqrec.services.gateway.ranker_client import AsyncRanker
from seqrec.services.gateway.settings import GatewaySettings
from seqrec.services.gateway.validation import describe_invalid, message_of
from seqrec.shared.json_api import (
    EVENT_TYPE_VALUES,
    QUERY_TYPES,
    RequestError,
    parse_request,
    response_to_json,
    rpc_name,
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid argument; `error.field` names the field."},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (when keys are configured)."},
    404: {"model": ErrorResponse, "description": "Unknown seed item."},
    409: {"model": ErrorResponse, "description": "Failed precondition: the deployment cannot answer this query "
                                                 "(e.g. item_text without an embedder)."},
    413: {"model": ErrorResponse, "description": "Request body over SEQREC_MAX_REQUEST_BYTES."},
    415: {"model": ErrorResponse, "description": "The body is not sent as application/json."},
    429: {"model": ErrorResponse, "description": "The ranker is at capacity; retry later."},
    502: {"model": ErrorResponse, "description": "The ranker failed unexpectedly; `error.incident` is logged."},
    503: {"model": ErrorResponse, "description": "The ranker (or one of its stores) is unavailable."},
    504: {"model": ErrorResponse, "description": "The ranker did not answer within SEQREC_DEADLINE_S."},
}
OPENAPI_EXAMPLES = {qt: {"summary": QUERY_DOCS[qt], "value": value} for qt, value in SPEC_EXAMPLES.items()}
HTTP_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


# FastAPI from 0.165 traces requests itself once a tracer provider is set: RequestContextMiddleware's span is
# the gateway's HTTP span on every FastAPI version, so the native one (a duplicate) is turned off where it exists.
NATIVE_TELEMETRY_OFF: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def create_app(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> FastAPI:
    """The HTTP API; its lifespan opens (and closes) the asyncio channel to the ranker."""
    metrics = metrics or GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ranker = AsyncRanker(settings.ranker, metrics, settings.tls)
        try:
            yield
        finally:
            await app.state.ranker.close()

    app = FastAPI(
        title="seqrec gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Hybrid BERT4Rec recommendations: one JSON request per query, routed by `query_type` "
                    "(item_to_item, user_to_item, contextual, sequential, gap), and interaction ingestion.",
        **NATIVE_TELEMETRY_OFF)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.draining = False  # set on SIGTERM: /readyz answers 503 while in-flight requests finish

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(settings.api_keys))
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # added last = outermost

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request_id = request.state.request_id
        if isinstance(exc.body, bytes | bytearray):  # a body FastAPI did not parse as JSON
            return error_response(415, "unsupported_media_type", "send the body as JSON (Content-Type: "
                                  "application/json)", field="body", request_id=request_id)
        recommend = request.url.path == "/v1/recommend"
        if recommend:
            body_type = exc.body.get("query_type") if isinstance(exc.body, dict) else None
            request.state.query_type = body_type if body_type in QUERY_TYPES else "invalid"
        field, message = describe_invalid(exc, parse_request if recommend else None)
        return error_response(400, "invalid_argument", message, field=field, request_id=request_id)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), request_id=request.state.request_id,
                              field="body" if exc.status_code == 400 else None,  # a body FastAPI could not parse
                              headers=dict(exc.headers or {}))

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES,
              tags=["recommendations"], summary="Recommend items for one query")
    async def recommend(request: Request,
                        query: Annotated[AnyQuery, Body(discriminator="query_type", openapi_examples=OPENAPI_EXAMPLES)]
                        ) -> Response:
        """Route the query by `query_type` to the ranker's typed RPC and answer with scored items."""
        request.state.query_type = query.query_type
        request_id = request.state.request_id
        try:
            query_type, message = parse_request(query.model_dump(exclude_unset=True))
        except RequestError as exc:
            return error_response(400, "invalid_argument", message_of(exc), field=exc.field, request_id=request_id)
        rpc = rpc_name(query_type)
        answer = await _call_ranker(request, rpc, message)
        if isinstance(answer, Response):
            return answer
        return JSONResponse({"query_type": query_type, **response_to_json(answer)})

    @app.post("/v1/events", response_model=EventsResponse, responses=ERROR_RESPONSES, tags=["events"],
              summary="Append interactions to users' histories")
    async def ingest_events(request: Request, batch: EventsRequest) -> Response:
        """Store interaction events (user_to_item and contextual use them at once), in timestamp order.

        Send an `event_id` per event and retrying a failed or timed-out call is always safe: an id already
        applied is acknowledged as a duplicate, never applied twice. On one Redis endpoint a call is all or
        nothing; on a Redis Cluster each user's events are, and such a retry completes the rest.
        Events without a timestamp are stamped with the time the gateway received them; events without an
        id get one here, so the gateway's own retries are safe too (a client's retry of those is not)."""
        now_ms = time.time_ns() // 1_000_000
        events = [common_pb2.Interaction(user_id=e.user_id, item_id=e.item_id, timestamp_ms=e.timestamp_ms or now_ms,
                                         event_id=e.event_id or f"gw-{uuid.uuid4().hex}",
                                         recommendation_id=e.recommendation_id,
                                         event_type=EVENT_TYPE_VALUES[e.event_type or ""])
                  for e in batch.events]
        answer = await _call_ranker(request, "IngestEvents", ranker_pb2.IngestEventsRequest(events=events))
        if isinstance(answer, Response):
            return answer
        return JSONResponse({"accepted": answer.accepted, "rejected": answer.rejected, "duplicates": answer.duplicates})

    async def _call_ranker(request: Request, rpc: str, message: Any) -> Any:
        return await ranker_answer(request, rpc, message, settings.deadline_s)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: the ranker reports SERVING",
             responses={503: {"description": "Not ready; `reason` says why."}})
    async def readyz(request: Request) -> JSONResponse:
        if request.app.state.draining:
            return JSONResponse({"status": "not_ready", "reason": "shutting down"}, status_code=503)
        serving, reason = await request.app.state.ranker.health()
        return JSONResponse({"status": "ready" if serving else "not_ready", "reason": reason},
                            status_code=200 if serving else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_docs_pages(app)
    add_console(app, settings.deadline_s)
    app.openapi = _openapi_builder(app, ApiKeys(settings.api_keys).enabled)  # type: ignore[method-assign]
    return app


def _openapi_builder(app: FastAPI, auth: bool) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document without FastAPI's 422 (invalid input is 400 here), with the API-key schemes."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if auth and path not in ("/healthz", "/readyz"):
                    operation["security"] = [{"ApiKeyHeader": []}, {"BearerAuth": []}]
        components = schema.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        components["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "BearerAuth": {"type": "http", "scheme": "bearer"},
        }
        app.openapi_schema = schema
        return schema

    return build
