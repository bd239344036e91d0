"""How failures become answers: gRPC status codes ↔ HTTP statuses, and the JSON error body.

| ranker status        | HTTP | error.code          |
|----------------------|------|---------------------|
| INVALID_ARGUMENT     | 400  | invalid_argument    |
| UNAUTHENTICATED      | 401  | unauthenticated     |
| NOT_FOUND            | 404  | not_found           |
| FAILED_PRECONDITION  | 409  | failed_precondition |
| RESOURCE_EXHAUSTED   | 429  | resource_exhausted  |
| UNAVAILABLE          | 503  | unavailable         |
| DEADLINE_EXCEEDED    | 504  | deadline_exceeded   |
| anything else        | 502  | upstream_error (with an incident id in the body and the logs) |

The field of a 4xx comes from the ranker's google.rpc.BadRequest detail, the Retry-After of a 429 / 503 from its
RetryInfo (shared/error_details.py); neither is parsed out of the message text.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from seqrec.shared.error_details import NO_DETAILS, ErrorDetails, details_of

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
FORWARDED_CODES = frozenset(HTTP_STATUS)  # the gRPC front door passes these on unchanged
RETRYABLE_HTTP = {429, 503}  # answered with Retry-After



def new_incident() -> str:
    return uuid.uuid4().hex[:12]


def _printable(text: str) -> str:
    """Text safe to send as UTF-8 JSON: what UTF-8 cannot carry (lone surrogates) is shown escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(code: str, message: str, *, field: str | None = None, incident: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": _printable(message)}
    if field:
        error["field"] = _printable(field)
    if incident:
        error["incident"] = incident
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


def error_response(status: int, code: str, message: str, *, field: str | None = None, incident: str | None = None,
                   request_id: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if status in RETRYABLE_HTTP:
        headers.setdefault("Retry-After", "1")
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="seqrec"')
    body = error_body(code, message, field=field, incident=incident, request_id=request_id)
    return JSONResponse(body, status_code=status, headers=headers)


def upstream_error_response(rpc: str, code: grpc.StatusCode, details: str, deadline_s: float,
                            request_id: str | None, typed: ErrorDetails = NO_DETAILS) -> JSONResponse:
    """The HTTP answer to a ranker call that failed with `code` (and the typed details it carried)."""
    status = HTTP_STATUS.get(code)
    if status is None:
        incident = new_incident()
        log.error("ranker call failed", extra={"rpc": rpc, "code": code.name, "details": details,
                                               "incident": incident, "request_id": request_id})
        return error_response(502, "upstream_error", f"the ranker failed (incident {incident})",
                              incident=incident, request_id=request_id)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"the ranker did not answer within the {deadline_s:g} s deadline"
    elif code == grpc.StatusCode.UNAVAILABLE:
        details = f"the ranker is unavailable: {details}"
    field = typed.field if status < 500 else None
    headers = {"Retry-After": str(max(1, math.ceil(typed.retry_after_s)))} if typed.retry_after_s else None
    log.info("ranker refused", extra={"rpc": rpc, "code": code.name, "details": details, "request_id": request_id})
    return error_response(status, code.name.lower(), details, field=field, request_id=request_id, headers=headers)


async def ranker_answer(request: Any, rpc: str, message: Any, deadline_s: float) -> Any:
    """The ranker's answer to one RPC, or the error response its failure maps to (502 with an incident id for
    anything that is not a gRPC status)."""
    request_id = request.state.request_id
    try:
        return await request.app.state.ranker.call(rpc, message, deadline_s, request_id)
    except grpc.RpcError as exc:
        return upstream_error_response(rpc, exc.code(), exc.details() or "", deadline_s, request_id, details_of(exc))
    except Exception:  # noqa: BLE001 - a broken channel or the like: 502, logged with an incident id
        incident = new_incident()
        log.exception("ranker call failed", extra={"rpc": rpc, "incident": incident, "request_id": request_id})
        return error_response(502, "upstream_error", f"the ranker call failed (incident {incident})",
                              incident=incident, request_id=request_id)
