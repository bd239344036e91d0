"""Prometheus metrics of a gRPC service (ranker, embedder, trainer): every RPC by method and status code, the
latency of the stages a call spends its time in, served over HTTP on SEQREC_METRICS_ADDRESS.

Labels are bounded: methods are the service's own RPC names (anything else counts as "other"), codes are
gRPC status names, stages are the names the service passes to `stage`. Each app has a registry of its own,
so several can run in one process (tests).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from seqrec.shared.exposure import split_host_port
from seqrec.shared.grpc_handlers import Behaviour, code_of, rewrap
from seqrec.shared.tracing import TRACER_NAME

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def methods_of(module: Any, service: str) -> list[str]:
    """The RPC names of `service` in a generated `*_pb2` module."""
    return [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]


class ServiceMetrics:
    """RPC and stage metrics of one service, named `seqrec_<service>_...`."""

    def __init__(self, service: str, methods: list[str]):
        self.registry = CollectorRegistry()
        self.methods = frozenset(methods)
        prefix = f"seqrec_{service}"
        self.rpcs = Counter(f"{prefix}_rpcs", "Finished RPCs by method and status code.", ("method", "code"),
                            registry=self.registry)
        self.rpc_latency = Histogram(f"{prefix}_rpc_duration_seconds", "RPC latency by method and status code.",
                                     ("method", "code"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_latency = Histogram(f"{prefix}_stage_duration_seconds",
                                       "Time spent in one stage of a call (encoder, Redis, Milvus, ...).",
                                       ("stage",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self._endpoint: MetricsEndpoint | None = None

    def serve(self, address: str) -> None:
        """Serve /metrics on `address` (SEQREC_METRICS_ADDRESS); "" leaves it off."""
        if address:
            self._endpoint = MetricsEndpoint(address, self.registry)

    def stop_serving(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1]
        name = name if name in self.methods else "other"
        self.rpcs.labels(name, code.name).inc()
        self.rpc_latency.labels(name, code.name).observe(seconds)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage `name` (recorded whether it succeeds or raises), in the histogram and
        as a span of the call's trace."""
        started = time.perf_counter()
        try:
            with trace.get_tracer(TRACER_NAME).start_as_current_span(name):
                yield
        finally:
            self.stage_latency.labels(name).observe(time.perf_counter() - started)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary and server-streaming call with the status it ended with. Placed before
    the ErrorInterceptor, it sees the status that one set (an abort is an exception carrying the code)."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        observe = self.metrics.observe_rpc

        def unary(inner: Behaviour) -> Behaviour:
            def timed(request: Any, context: grpc.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    answer = inner(request, context)
                    failed = False
                    return answer
                finally:
                    observe(method, code_of(context, failed), time.perf_counter() - started)
            return timed

        def stream(inner: Behaviour) -> Behaviour:
            def timed_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started, failed = time.perf_counter(), True
                try:
                    yield from inner(request, context)
                    failed = False
                finally:
                    observe(method, code_of(context, failed), time.perf_counter() - started)
            return timed_stream

        return rewrap(handler, unary, stream)


class MetricsEndpoint:
    """/metrics over HTTP for Prometheus, on `address` (host:port; port 0 picks a free one)."""

    def __init__(self, address: str, registry: CollectorRegistry):
        host, port = split_host_port(address)
        self.server: WSGIServer
        self.server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
