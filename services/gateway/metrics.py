"""Prometheus metrics of the gateway, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_PATHS = ("/v1/recommend", "/v1/events", "/v1/model", "/v1/model/report", "/v1/history", "/healthz", "/readyz",
               "/metrics", "/openapi.json", "/docs", "/redoc", "/ui")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ("path", "query_type", "status")
        self.http_requests = Counter(
            "seqrec_gateway_http_requests", "HTTP requests by path, query type and HTTP status.", labels,
            registry=self.registry)
        self.http_latency = Histogram(
            "seqrec_gateway_http_request_duration_seconds", "HTTP request latency, body read to last byte sent.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.http_in_flight = Gauge(
            "seqrec_gateway_http_requests_in_flight", "HTTP requests being handled.", registry=self.registry)
        self.grpc_requests = Counter(
            "seqrec_gateway_grpc_requests", "gRPC front door calls by query type and status code.",
            ("query_type", "code"), registry=self.registry)
        self.grpc_latency = Histogram(
            "seqrec_gateway_grpc_request_duration_seconds", "gRPC front door call latency.",
            ("query_type", "code"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ranker_calls = Counter(
            "seqrec_gateway_ranker_calls", "Calls to the ranker by RPC and status code.", ("rpc", "code"),
            registry=self.registry)
        self.ranker_latency = Histogram(
            "seqrec_gateway_ranker_call_duration_seconds", "Ranker call latency by RPC.", ("rpc",),
            buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_http(self, path: str, query_type: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS else "other"  # bounded label values
        self.http_requests.labels(path, query_type, str(status)).inc()
        self.http_latency.labels(path, query_type, str(status)).observe(seconds)

    def observe_grpc(self, query_type: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(query_type, code).inc()
        self.grpc_latency.labels(query_type, code).observe(seconds)

    def observe_ranker(self, rpc: str, code: str, seconds: float) -> None:
        self.ranker_calls.labels(rpc, code).inc()
        self.ranker_latency.labels(rpc).observe(seconds)
