"""Typed error details on gRPC statuses (the google.rpc richer error model), written and read in one place.

Every seqrec service ends a failed call through `shared.grpc_server.ErrorInterceptor`, which attaches a
`google.rpc.Status` in the `grpc-status-details-bin` trailer:

- INVALID_ARGUMENT (and NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE when the message names a field): a
  `google.rpc.BadRequest` with one field violation, the field the refusal is about (`events[1].timestamp_ms`,
  `filters.meta.genre`, `item_id`, `request` for bytes that are not a message);
- UNAVAILABLE and RESOURCE_EXHAUSTED raised by seqrec (a store down, every stream slot busy): a
  `google.rpc.RetryInfo` with the delay after which a retry makes sense.

Clients (the gateway; any caller with googleapis-common-protos) read them with `details_of`; the status
message stays the human-readable text it always was. Refusals are raised as "field: what is wrong" (the
convention of every raise site); `split_field` turns that message into the structured violation once, on
the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAILS_KEY = "grpc-status-details-bin"
RETRY_DELAY_S = 1.0  # what a retry waits: a restarted store or a freed stream slot is usually back by then
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# the caller's mistakes: the message's leading field travels as a BadRequest field violation (an unknown
# `item_id` is NOT_FOUND, a text query on a bundle without text FAILED_PRECONDITION, both about one field)
NAMES_A_FIELD = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE})

# "top_k: must be ...", "filters.meta.genre: ...", "events[1].timestamp_ms: ...", "a and b: ..." → the field
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]-]*)(?: and [A-Za-z_]\w*)?: ")


def split_field(message: str) -> str | None:
    """The field a refusal's message names at its start ("top_k: must be ..."), if it names one."""
    match = _FIELD_PREFIX.match(message or "")
    return match.group(1) if match else None


def rich_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    """The status a call ends with: `code` and `message`, with BadRequest or RetryInfo details where they apply."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    field = split_field(message) if code in NAMES_A_FIELD else None
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if code in RETRYABLE:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=RETRY_DELAY_S))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call's typed details say; empty when it carried none."""

    field: str | None = None  # BadRequest: the first violated field
    description: str | None = None
    retry_after_s: float | None = None  # RetryInfo


NO_DETAILS = ErrorDetails()


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """The BadRequest and RetryInfo details of a failed call (blocking or asyncio), if it carried any."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    raw = next((value for key, value in (trailers or ()) if key == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return NO_DETAILS
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # noqa: BLE001 - a peer's malformed trailer is no detail at all, not a crash
        return NO_DETAILS
    field = description = retry = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations and field is None:
                field, description = bad.field_violations[0].field, bad.field_violations[0].description
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(field=field, description=description, retry_after_s=retry)
