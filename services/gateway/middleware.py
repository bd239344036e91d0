"""Pure ASGI middleware of the HTTP API: request context (id, metrics, access log, last-resort errors),
API-key authentication and the request body size limit."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from opentelemetry.trace import Status, StatusCode
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqrec.services.gateway.auth import ApiKeys
from seqrec.services.gateway.errors import error_response, new_incident
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.shared.tracing import server_span

log = logging.getLogger("seqrec.gateway.http")

REQUEST_ID_HEADER = "x-request-id"
_GOOD_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
# No API key needed: the probes, and the API's description, its pages and the console page (no data; the pages
# send the key the person types with each call they make).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/ui"})
OPEN_PREFIXES = ("/docs-assets/", "/ui/assets/")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # access-logged at debug level


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


class RequestContextMiddleware:
    """Outermost layer: a request id (the caller's X-Request-ID when sane), a trace span (continuing the
    caller's `traceparent`), Prometheus metrics, one JSON access-log line per request, and a JSON 500 with an
    incident id for anything that escapes."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if _GOOD_REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status, started, start = 500, False, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        traced = scope["path"] not in QUIET_PATHS  # probes and scrapes would drown the traces that matter
        span = (server_span(f'{scope["method"]} {scope["path"]}', Headers(scope=scope),
                            {"http.request.method": scope["method"], "url.path": scope["path"]})
                if traced else contextlib.nullcontext())
        self.metrics.http_in_flight.inc()
        with span as current:  # the ranker call and every log line of the request are inside it
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:  # noqa: BLE001 - the last resort: never a bare 500
                incident = new_incident()
                log.exception("unhandled error", extra={"incident": incident, "request_id": request_id,
                                                        "path": scope["path"]})
                if not started:
                    response = error_response(500, "internal", f"internal error (incident {incident})",
                                              incident=incident, request_id=request_id)
                    await response(scope, receive, send_with_id)
            finally:
                self.metrics.http_in_flight.dec()
                seconds = time.perf_counter() - start
                query_type = state.get("query_type", "none")
                self.metrics.observe_http(scope["path"], query_type, status, seconds)
                if current is not None:
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        current.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
                log.log(level, "request", extra={
                    "method": scope["method"], "path": scope["path"], "status": status, "query_type": query_type,
                    "duration_ms": round(seconds * 1000, 3), "request_id": request_id,
                    "client": (scope.get("client") or ("", 0))[0]})


class ApiKeyMiddleware:
    """When keys are configured, every path but the open ones (probes, API docs) needs `X-API-Key` or
    `Authorization: Bearer`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.enabled and not is_open(scope["path"]):
            headers = Headers(scope=scope)
            if not self.keys.allows(headers.get("x-api-key"), headers.get("authorization")):
                log.info("unauthenticated request", extra={"path": scope["path"], "request_id": request_id_of(scope)})
                response = error_response(401, "unauthenticated",
                                          "missing or invalid API key: send X-API-Key or Authorization: Bearer",
                                          request_id=request_id_of(scope))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413: at once from Content-Length, else while reading, so never
    more than `max_bytes` (plus one network chunk) is held. The body is then replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"request body larger than {self.max_bytes} bytes",
                                  field="body", request_id=request_id_of(scope), headers={"Connection": "close"})
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                response = error_response(400, "invalid_argument", "malformed Content-Length header",
                                          field="body", request_id=request_id_of(scope))
                await response(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
