"""Clients of the ranker: asyncio for the HTTP API, blocking for the gRPC front door, both with health checks."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqrec.proto.v1 import ranker_pb2, ranker_pb2_grpc
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.shared.grpc_client import CLIENT_OPTIONS
from seqrec.shared.tls import TlsSettings, open_aio_channel, open_channel
from seqrec.shared.tracing import inject_metadata

RANKER_SERVICE = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].full_name
HEALTH_TIMEOUT_S = 1.0
_SERVING = health_pb2.HealthCheckResponse.SERVING


def _metadata(request_id: str | None) -> Sequence[tuple[str, str]]:
    """The request id and the trace context of the request being served, for the ranker."""
    return inject_metadata((("x-request-id", request_id),) if request_id else ())


def _health_reason(status: int) -> tuple[bool, str]:
    if status == _SERVING:
        return True, "ok"
    return False, f"ranker health is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"


def _unreachable(exc: grpc.RpcError) -> tuple[bool, str]:
    return False, f"ranker unreachable: {exc.code().name}: {exc.details()}"


class AsyncRanker:
    """The ranker over a grpc.aio channel; create it inside the event loop that uses it."""

    def __init__(self, target: str, metrics: GatewayMetrics, tls: TlsSettings | None = None):
        self.channel = open_aio_channel(target, tls, CLIENT_OPTIONS)
        self.stub = ranker_pb2_grpc.RankerServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metrics = metrics

    async def call(self, rpc: str, request: Message, timeout: float, request_id: str | None) -> Message:
        """One unary RPC of the ranker (e.g. "Sequential"); grpc.RpcError carries its status."""
        start, code = time.perf_counter(), "OK"
        try:
            return await getattr(self.stub, rpc)(request, timeout=timeout, metadata=_metadata(request_id))
        except grpc.RpcError as exc:
            code = exc.code().name
            raise
        finally:
            self.metrics.observe_ranker(rpc, code, time.perf_counter() - start)

    async def health(self) -> tuple[bool, str]:
        """(serving, reason) from the ranker's grpc.health.v1 status."""
        try:
            answer = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=RANKER_SERVICE),
                                                  timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError as exc:
            return _unreachable(exc)
        return _health_reason(answer.status)

    async def close(self) -> None:
        await self.channel.close()


class BlockingRanker:
    """The ranker over a blocking channel, for the gRPC front door's worker threads."""

    def __init__(self, target: str, metrics: GatewayMetrics, tls: TlsSettings | None = None):
        self.channel = open_channel(target, tls, CLIENT_OPTIONS)
        self.stub = ranker_pb2_grpc.RankerServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metrics = metrics

    def call(self, rpc: str, request: Message, timeout: float, request_id: str | None) -> Message:
        start, code = time.perf_counter(), "OK"
        try:
            return getattr(self.stub, rpc)(request, timeout=timeout, metadata=_metadata(request_id))
        except grpc.RpcError as exc:
            code = exc.code().name
            raise
        finally:
            self.metrics.observe_ranker(rpc, code, time.perf_counter() - start)

    def health(self) -> tuple[bool, str]:
        try:
            answer = self.health_stub.Check(health_pb2.HealthCheckRequest(service=RANKER_SERVICE),
                                            timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError as exc:
            return _unreachable(exc)
        return _health_reason(answer.status)

    def close(self) -> None:
        self.channel.close()
