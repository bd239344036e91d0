"""OpenTelemetry traces: one trace per request across gateway → ranker → embedder.

Every service installs an SDK tracer provider when it starts (`configure_tracing`), so spans and their ids
exist, and are in the JSON log lines (shared/logs.py), whether or not they leave the process. Export is off
by default; `SEQREC_OTLP_ENDPOINT` (`host:port`, `http://host:port` or `https://host:port` of an OTLP/gRPC
collector) sends them in batches, with the exporter's own `OTEL_EXPORTER_OTLP_*` variables (headers,
certificates) and the batch processor's `OTEL_BSP_*` ones honoured. `SEQREC_TRACE_SAMPLE_RATIO` (1.0) samples
new traces; a caller's sampling decision is kept. Context travels as W3C `traceparent` / `tracestate` in
gRPC metadata and HTTP headers: `inject_metadata` on the way out, `TracingInterceptor` or `server_span` on
the way in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from seqrec.shared.grpc_handlers import code_of, rewrap
from seqrec.shared.settings import Env, SettingsError

log = logging.getLogger(__name__)

TRACER_NAME = "seqrec"
# Server-side codes that mean the service failed (OpenTelemetry's gRPC conventions); the others are the caller's.
SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")  # probes would drown the traces that matter


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str = ""  # OTLP/gRPC collector ("" = spans stay in the process, for log correlation)
    insecure: bool = True  # plaintext to the collector (host:port and http://); https:// uses TLS
    sample_ratio: float = 1.0

    @classmethod
    def from_env(cls, env: Env) -> TracingSettings:
        raw = env.str("SEQREC_OTLP_ENDPOINT", "").strip()
        ratio = env.float("SEQREC_TRACE_SAMPLE_RATIO", 1.0, minimum=0.0)
        if ratio > 1.0:
            raise SettingsError(f"SEQREC_TRACE_SAMPLE_RATIO: must be between 0 and 1, got {ratio:g}")
        if not raw:
            return cls(sample_ratio=ratio)
        parsed = urlparse(raw if "://" in raw else f"http://{raw}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
            raise SettingsError(f"SEQREC_OTLP_ENDPOINT: expected host:port or http(s)://host:port of an OTLP/gRPC "
                                f"collector, got {raw!r}")
        return cls(f"{parsed.hostname}:{parsed.port}", parsed.scheme == "http", ratio)


_provider: TracerProvider | None = None


def configure_tracing(service: str, settings: TracingSettings) -> TracerProvider:
    """Install this process's tracer provider (`seqrec-<service>`); the first call wins, so apps that share a
    process (tests) share one provider."""
    global _provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": f"seqrec-{service}"}),
                              sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    if settings.endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint,
                                                                        insecure=settings.insecure)))
        log.info("exporting traces", extra={"otlp_endpoint": settings.endpoint, "sample_ratio": settings.sample_ratio})
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Export what is still buffered (at shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject_metadata(metadata: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """`metadata` plus the current trace context (traceparent, tracestate), for an outgoing gRPC call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [*metadata, *carrier.items()]


@contextlib.contextmanager
def server_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[trace.Span]:
    """A SERVER span named `name`, child of the trace context in `carrier` (headers or metadata), current
    inside the block."""
    parent = propagate.extract(carrier)
    with tracer().start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes),
                                        record_exception=False, set_status_on_exception=False) as span:
        yield span


class TracingInterceptor(grpc.ServerInterceptor):
    """A SERVER span per unary call and server stream (health and reflection excepted), with the caller's
    trace context from the metadata and the status the call ended with. Outermost, so the span covers the
    other interceptors and sees the code the error interceptor set."""

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        service, _, rpc = method.lstrip("/").partition("/")
        carrier = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

        @contextlib.contextmanager
        def traced(context: grpc.ServicerContext) -> Iterator[None]:
            with server_span(f"{service}/{rpc}", carrier, attributes) as span:
                failed = True
                try:
                    yield
                    failed = False
                finally:
                    code = code_of(context, failed)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code in SERVER_ERRORS:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        def unary(inner: Any) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                with traced(context):
                    return inner(request, context)
            return call

        def stream(inner: Any) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with traced(context):
                    yield from inner(request, context)
            return call

        return rewrap(handler, unary, stream)
