"""Failed calls as one exception type that says which field was wrong and when a retry makes sense.

seqrec's servers end a failed call with a `google.rpc.Status` in the `grpc-status-details-bin` trailer: a
`google.rpc.BadRequest` naming the field a refusal is about, a `google.rpc.RetryInfo` where a retry makes
sense. They are read here with wire-compatible mirrors of those three messages, so the client needs
protobuf only (not googleapis-common-protos); the status code and message are gRPC's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

DETAILS_KEY = "grpc-status-details-bin"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def _mirrors() -> dict[str, type]:
    """Message classes with the wire format of google.rpc.Status, BadRequest and RetryInfo (Any and Duration
    are spelt out as their two fields), in a pool of their own: no clash with googleapis-common-protos."""
    file = descriptor_pb2.FileDescriptorProto(name="seqrec_client_rpc_status.proto",
                                              package="seqrec_client_rpc", syntax="proto3")
    optional, repeated = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, \
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    types = descriptor_pb2.FieldDescriptorProto
    layout = {
        "Any": [("type_url", 1, types.TYPE_STRING, optional, None), ("value", 2, types.TYPE_BYTES, optional, None)],
        "Status": [("code", 1, types.TYPE_INT32, optional, None), ("message", 2, types.TYPE_STRING, optional, None),
                   ("details", 3, types.TYPE_MESSAGE, repeated, "Any")],
        "FieldViolation": [("field", 1, types.TYPE_STRING, optional, None),
                           ("description", 2, types.TYPE_STRING, optional, None)],
        "BadRequest": [("field_violations", 1, types.TYPE_MESSAGE, repeated, "FieldViolation")],
        "Duration": [("seconds", 1, types.TYPE_INT64, optional, None), ("nanos", 2, types.TYPE_INT32, optional, None)],
        "RetryInfo": [("retry_delay", 1, types.TYPE_MESSAGE, optional, "Duration")],
    }
    for name, fields in layout.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            message.field.add(name=field_name, number=number, type=kind, label=label,
                              type_name=f".seqrec_client_rpc.{type_name}" if type_name else None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"seqrec_client_rpc.{name}"))
            for name in layout}


_MESSAGES = _mirrors()


@dataclass
class SeqrecError(Exception):
    """A call seqrec refused or could not answer.

    `field` names the request field a refusal is about (`top_k`, `filters.meta.genre`, `events[1].item_id`);
    `retry_after_s` is set where the server says a retry makes sense (a store restarting, every slot busy).
    """

    code: grpc.StatusCode
    message: str
    field: str | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.retry_after_s is not None

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> SeqrecError:
        """The error a failed gRPC call ended with, its typed details read where it carried them."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        field, retry_after = _details(error.trailing_metadata() if hasattr(error, "trailing_metadata") else None)
        return cls(code, message or "", field, retry_after)


def _details(trailers: object) -> tuple[str | None, float | None]:
    raw = next((value for key, value in (trailers or ()) if key == DETAILS_KEY), None)  # type: ignore[attr-defined]
    if not isinstance(raw, bytes):
        return None, None
    try:
        status = _MESSAGES["Status"].FromString(raw)
    except DecodeError:  # a proxy's or a foreign server's trailer: the code and message still tell the story
        return None, None
    field, retry_after = None, None
    for detail in status.details:
        if detail.type_url == _BAD_REQUEST and field is None:
            violations = _MESSAGES["BadRequest"].FromString(detail.value).field_violations
            field = violations[0].field if violations else None
        elif detail.type_url == _RETRY_INFO:
            delay = _MESSAGES["RetryInfo"].FromString(detail.value).retry_delay
            retry_after = delay.seconds + delay.nanos / 1e9
    return field, retry_after
