"""The gRPC front door: RecommendService.Recommend forwards its oneof member to the ranker's RPC of
the same query type, with the caller's deadline, and passes the ranker's status codes on.

Health (grpc.health.v1, "" and "seqrec.proto.v1.RecommendService") is SERVING only while the
ranker reports SERVING. With API keys configured, calls need `x-api-key` or `authorization:
Bearer` metadata (health checks excepted).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from seqrec.proto.v1 import gateway_pb2, gateway_pb2_grpc, ranker_pb2
from seqrec.services.gateway.auth import ApiKeys
from seqrec.services.gateway.errors import FORWARDED_CODES
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.services.gateway.ranker_client import BlockingRanker
from seqrec.services.gateway.settings import GatewaySettings
from seqrec.shared.grpc_server import SERVER_OPTIONS, ErrorInterceptor, ErrorMapping, HealthReporter
from seqrec.shared.json_api import QUERY_TYPES, rpc_name
from seqrec.shared.tls import add_port
from seqrec.shared.tracing import TracingInterceptor

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"
NO_DEADLINE_S = 1e7  # grpc reports a call without a deadline as one in the far future


class StatusError(Exception):
    """A call refused with a given status code (the ranker's, passed on)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code


class StatusErrorMapping(ErrorMapping):
    def code_for(self, exc: BaseException) -> grpc.StatusCode | None:
        return exc.code if isinstance(exc, StatusError) else super().code_for(exc)


def caller_timeout(context: grpc.ServicerContext, default_s: float) -> float:
    """What is left of the caller's deadline, else the default deadline."""
    remaining = context.time_remaining()
    return default_s if remaining is None or remaining >= NO_DEADLINE_S else remaining


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class RecommendServicer(gateway_pb2_grpc.RecommendServiceServicer):
    def __init__(self, ranker: BlockingRanker, default_deadline_s: float, metrics: GatewayMetrics):
        self.ranker = ranker
        self.default_deadline_s = default_deadline_s
        self.metrics = metrics

    def Recommend(self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext
                  ) -> ranker_pb2.RecommendResponse:
        query_type = request.WhichOneof("query")
        start, code = time.perf_counter(), "OK"
        try:
            if query_type is None:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"query: set exactly one of {', '.join(QUERY_TYPES)}")
            rpc = rpc_name(query_type)
            try:
                return self.ranker.call(rpc, getattr(request, query_type), caller_timeout(context,
                                        self.default_deadline_s), _request_id(context))
            except grpc.RpcError as exc:
                if exc.code() in FORWARDED_CODES:
                    raise StatusError(exc.code(), exc.details() or "") from None
                # logged by the ErrorInterceptor with an incident id; the caller gets INTERNAL
                raise RuntimeError(f"ranker {rpc} failed with {exc.code().name}: {exc.details()}") from None
        except StatusError as exc:
            code = exc.code.name
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.metrics.observe_grpc(query_type or "none", code, time.perf_counter() - start)


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Refuses calls without an accepted key with UNAUTHENTICATED; health checks stay open."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys
        self._deny = grpc.unary_unary_rpc_method_handler(self._refuse)

    @staticmethod
    def _refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or invalid API key: send x-api-key or authorization: Bearer metadata")

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if not self.keys.enabled or handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        metadata = {k.lower(): v for k, v in handler_call_details.invocation_metadata or ()
                    if isinstance(v, str)}
        if self.keys.allows(metadata.get("x-api-key"), metadata.get("authorization")):
            return continuation(handler_call_details)
        return self._deny


class GrpcFrontDoor:
    """The gRPC server of the gateway, its ranker channel and its health reporting."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics):
        self.settings = settings
        self.ranker = BlockingRanker(settings.ranker, metrics, settings.tls)
        interceptors = [TracingInterceptor(), ApiKeyInterceptor(ApiKeys(settings.api_keys)),
                        ErrorInterceptor(StatusErrorMapping([]))]
        # like make_server, but a port another process holds is an error rather than shared (SO_REUSEPORT)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="rpc"),
            interceptors=interceptors, options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
        gateway_pb2_grpc.add_RecommendServiceServicer_to_server(
            RecommendServicer(self.ranker, settings.deadline_s, metrics), self.server)
        self.health = HealthReporter(self.server, [SERVICE_NAME], self.ranker.health, settings.health_interval_s)
        self.port = add_port(self.server, settings.grpc_address, settings.tls)
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.server.start()
        self.health.start()

    def begin_stop(self, grace: float) -> threading.Event:
        """NOT_SERVING at once, refuse new calls, give in-flight ones `grace` seconds (idempotent)."""
        with self._lock:
            if self._stopped is None:
                self.health.shutdown()
                self._stopped = self.server.stop(grace)
            return self._stopped

    def stop(self, grace: float) -> None:
        self.begin_stop(grace).wait()
        self.ranker.close()
