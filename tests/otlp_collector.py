"""A minimal OTLP/gRPC trace collector on loopback, for the tracing tests: the services export to it with the
real OpenTelemetry exporter over the real protocol, and the test reads back what arrived."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict


class OtlpCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span; `address` is its host:port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext):
        received = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
                    received.append(ReceivedSpan(service, span.name, span.trace_id.hex(), span.span_id.hex(),
                                                 span.parent_span_id.hex(), attributes))
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, services: set[str], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans of `trace_id`, once spans from every one of `services` have arrived (else AssertionError)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if services <= {s.service for s in spans}:
                return spans
            assert time.monotonic() < deadline, f"spans of {trace_id} arrived from {sorted({s.service for s in spans})}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.stop(0)
