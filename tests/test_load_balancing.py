"""Client-side load balancing from the gateway to ranker replicas, with real rankers and a real DNS name.

The gateway's ranker clients (services/gateway/ranker_client.py, with shared/grpc_client.py's options) dial
one target that resolves to several rankers: a tiny DNS server (tests/dns_server.py) answers for the name,
as a headless Kubernetes Service does, and each ranker listens on its own loopback address (127.0.0.2,
127.0.0.3, same port), names itself in GetModelInfo (SEQREC_INSTANCE) and serves the same published bundle.

- both replicas behind the name answer calls, from the blocking client (front door) and the asyncio one (HTTP);
- a replica added while the gateway runs gets calls without a restart: the first ranker closes connections
  after SEQREC_MAX_CONNECTION_AGE_S, the channel re-resolves the name and finds the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from seqrec.proto.v1 import common_pb2
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.services.gateway.ranker_client import AsyncRanker, BlockingRanker
from seqrec.shared.local_services import free_port
from tests.dns_server import DnsServer
from tests.test_fuzz_grpc import fuzz_bundle, running_ranker

NAME = "rankers.seqrec.test"
REPLICAS = {"ranker-a": "127.0.0.2", "ranker-b": "127.0.0.3"}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def bundle(tmp_path_factory):
    return fuzz_bundle(tmp_path_factory.getbasetemp())


@contextlib.contextmanager
def replica(bundle, redis_server, milvus_server, name: str, port: int, **env: str) -> Iterator[str]:
    with running_ranker(bundle, redis_server.address, milvus_server, SEQREC_INSTANCE=name,
                        SEQREC_RANKER_ADDRESS=f"{REPLICAS[name]}:{port}", **env) as address:
        yield address


def who(ranker: BlockingRanker) -> str:
    return ranker.call("GetModelInfo", common_pb2.GetModelInfoRequest(), timeout=10, request_id=None).instance


def test_calls_spread_over_every_replica_the_name_resolves_to(dns, bundle, redis_server, milvus_server):
    port = free_port()
    dns.records[NAME] = list(REPLICAS.values())
    target = f"dns://127.0.0.1:{dns.port}/{NAME}:{port}"
    with replica(bundle, redis_server, milvus_server, "ranker-a", port), \
            replica(bundle, redis_server, milvus_server, "ranker-b", port):
        blocking = BlockingRanker(target, GatewayMetrics())
        try:
            served = Counter(who(blocking) for _ in range(20))
        finally:
            blocking.close()

        async def from_the_http_client() -> Counter:
            ranker = AsyncRanker(target, GatewayMetrics())
            try:
                answers = [await ranker.call("GetModelInfo", common_pb2.GetModelInfoRequest(), 10, None)
                           for _ in range(20)]
            finally:
                await ranker.close()
            return Counter(a.instance for a in answers)

        served_async = asyncio.run(from_the_http_client())
    assert set(served) == set(REPLICAS) and min(served.values()) >= 5, served  # round robin: about 10 each
    assert set(served_async) == set(REPLICAS) and min(served_async.values()) >= 5, served_async


def test_a_replica_added_later_gets_calls_without_a_client_restart(dns, bundle, redis_server, milvus_server):
    port = free_port()
    dns.records[NAME] = [REPLICAS["ranker-a"]]
    ranker = BlockingRanker(f"dns://127.0.0.1:{dns.port}/{NAME}:{port}", GatewayMetrics())
    failures: list[str] = []
    try:
        with replica(bundle, redis_server, milvus_server, "ranker-a", port, SEQREC_MAX_CONNECTION_AGE_S="1"):
            assert {who(ranker) for _ in range(5)} == {"ranker-a"}
            with replica(bundle, redis_server, milvus_server, "ranker-b", port):
                dns.records[NAME] = list(REPLICAS.values())  # the autoscaler added a pod
                seen: Counter = Counter()
                deadline = time.monotonic() + 60
                while seen["ranker-b"] < 3 and time.monotonic() < deadline:
                    try:
                        seen[who(ranker)] += 1
                    except grpc.RpcError as exc:  # a call must survive the reconnects: none may fail
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    time.sleep(0.05)
    finally:
        ranker.close()
    assert seen["ranker-b"] >= 3, seen
    assert not failures, failures
