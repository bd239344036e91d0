"""Wrapping the behaviour of a gRPC method handler: what the server interceptors (errors, metrics, traces) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def rewrap(handler: grpc.RpcMethodHandler, unary: Callable[[Behaviour], Behaviour],
           stream: Callable[[Behaviour], Behaviour],
           deserializer: Callable[[Callable | None], Callable | None] = lambda d: d) -> grpc.RpcMethodHandler:
    """`handler` with a unary-unary behaviour wrapped by `unary`, a unary-stream one by `stream` (other
    kinds, which seqrec does not serve, as they are); `deserializer` may wrap the request deserializer."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), request_deserializer=deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), request_deserializer=deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer)
    return handler


def code_of(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status a call ended with: what an abort (or set_code) left, else UNKNOWN if it raised, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
