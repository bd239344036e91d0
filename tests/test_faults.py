"""Faults while requests flow: real dependencies killed and restarted under a running ranker.

Each test owns the dependency it kills (its own redis-server, milvus-lite server or embedder), so the
session-wide ones stay intact. Recovery must happen without restarting the ranker.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.server import RankerApp
from seqrec.shared.error_details import RETRY_DELAY_S, details_of
from seqrec.shared.local_services import free_port, start_milvus_lite, start_redis
from seqrec.shared.settings import Env
from tests.test_ranker import _settings, _wait_health

RECOVERY_S = 5.0


def _until(call, timeout: float = RECOVERY_S):
    """Retry `call` until it succeeds; the answer and how long recovery took."""
    started = time.monotonic()
    while True:
        try:
            return call(), time.monotonic() - started
        except grpc.RpcError:
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.1)


def test_redis_restart_loses_no_acknowledged_event(trained_bundle, milvus_server, tmp_path):
    redis = start_redis(tmp_path / "redis")
    url = f"redis://{redis.address}/0"
    publish(trained_bundle[0], url, milvus_server, progress=False)
    app = RankerApp(_settings(trained_bundle[0], url, milvus_server, SEQREC_HEALTH_INTERVAL_S="0.2"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    acknowledged = []
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        for n in range(50):
            event = common_pb2.Interaction(user_id="fault-user", item_id=f"s{n % 30}e{n % 8}", timestamp_ms=1000 + n)
            stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=[event]), timeout=5)
            acknowledged.append(event.item_id)
        redis.kill()  # abrupt: no shutdown save; only the append-only file survives
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as err:  # never acknowledge a write that did not happen
            stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=[common_pb2.Interaction(
                user_id="fault-user", item_id="s1e1", timestamp_ms=9999)]), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="fault-user", top_k=3), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in err.value.details()
        assert details_of(err.value).retry_after_s == RETRY_DELAY_S  # google.rpc.RetryInfo: worth a retry
        assert len(stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3), timeout=5).items) == 3

        redis = start_redis(tmp_path / "redis", port=redis.port)
        history, took = _until(lambda: stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id="fault-user"), timeout=2))
        assert took < RECOVERY_S
        assert list(history.item_ids) == acknowledged  # every acknowledged event, nothing else
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=RECOVERY_S)
    finally:
        channel.close()
        app.stop(0)
        redis.stop()


def test_milvus_down_and_back(trained_bundle, redis_server, tmp_path):
    milvus = start_milvus_lite(tmp_path / "milvus")
    uri, redis_url = f"http://{milvus.address}", f"redis://{redis_server.address}/0"
    publish(trained_bundle[0], redis_url, uri, progress=False)
    app = RankerApp(_settings(trained_bundle[0], redis_url, uri, SEQREC_HEALTH_INTERVAL_S="0.2"))
    app.items.timeout = 2.0  # fail fast while Milvus is gone
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        milvus.kill()
        with pytest.raises(grpc.RpcError) as err:
            stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Milvus" in err.value.details()
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        # what needs no vector search keeps working: popularity for an unknown user, history reads
        fallback = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="nobody-here", top_k=3), timeout=5)
        assert len(fallback.items) == 3
        stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id="u1"), timeout=5)

        milvus = start_milvus_lite(tmp_path / "milvus", port=milvus.port)
        got, took = _until(lambda: stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3),
                                                   timeout=3), timeout=30)
        assert len(got.items) == 3
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=10)
    finally:
        channel.close()
        app.stop(0)
        milvus.stop()


def test_embedder_down_and_back(cold_bundle, redis_server, milvus_server, minilm):
    port = free_port()
    settings = EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{port}"}))
    embedder = EmbedderApp(settings, model=minilm)
    embedder.start()
    redis_url = f"redis://{redis_server.address}/0"
    publish(cold_bundle[0], redis_url, milvus_server, progress=False)
    app = RankerApp(_settings(cold_bundle[0], redis_url, milvus_server, SEQREC_EMBEDDER=f"127.0.0.1:{port}"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    by_text = ranker_pb2.ItemToItemRequest(item_id="pilot", item_text="name: Series 3 episode 2", top_k=3)
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        assert len(stub.ItemToItem(by_text, timeout=10).items) == 3
        embedder.stop(0)
        with pytest.raises(grpc.RpcError) as err:
            stub.ItemToItem(by_text, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "embedder" in err.value.details()
        assert len(stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="s3e3", top_k=3), timeout=5).items) == 3
        assert _health_status(channel) == health_pb2.HealthCheckResponse.SERVING  # the rest keeps serving

        embedder = EmbedderApp(settings, model=minilm)
        embedder.start()
        got, took = _until(lambda: stub.ItemToItem(by_text, timeout=3), timeout=15)
        assert len(got.items) == 3
    finally:
        channel.close()
        app.stop(0)
        embedder.stop(0)


def _health_status(channel: grpc.Channel) -> int:
    from grpc_health.v1 import health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="seqrec.proto.v1.RankerService"), timeout=2).status


def test_a_hung_milvus_costs_a_call_its_deadline_and_health_says_so(trained_bundle, redis_server, tmp_path):
    """Milvus stops answering (SIGSTOP) without closing connections: a call with a 1 s deadline gets
    DEADLINE_EXCEEDED (the store call is cut at the caller's deadline rather than its own 10 s), and the
    health probe, whose Milvus calls share a 3 s budget, turns NOT_SERVING."""
    import os
    import signal

    from seqrec.shared.deadlines import DeadlineExceeded, bounded, call_deadline

    with call_deadline(0.5):
        assert bounded(10.0) <= 0.5
    with call_deadline(-1.0), pytest.raises(DeadlineExceeded):
        bounded(10.0)
    assert bounded(10.0) == 10.0  # outside a call

    milvus = start_milvus_lite(tmp_path / "milvus")
    uri, redis_url = f"http://{milvus.address}", f"redis://{redis_server.address}/0"
    publish(trained_bundle[0], redis_url, uri, progress=False)
    app = RankerApp(_settings(trained_bundle[0], redis_url, uri, SEQREC_HEALTH_INTERVAL_S="0.5"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    stopped = False
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        os.kill(milvus.process.pid, signal.SIGSTOP)
        stopped = True
        with pytest.raises(grpc.RpcError) as err:
            stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3), timeout=1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=20)
        os.kill(milvus.process.pid, signal.SIGCONT)
        stopped = False
        got, _ = _until(lambda: stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3),
                                                timeout=5), timeout=30)
        assert len(got.items) == 3
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=20)
    finally:
        if stopped:
            os.kill(milvus.process.pid, signal.SIGCONT)
        channel.close()
        app.stop(0)
        milvus.stop()


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_hung_redis_costs_a_store_call_the_callers_deadline(topology, tmp_path):
    """Redis stops answering (SIGSTOP) with connections open: with a 0.5 s deadline a history read gives up
    near 0.5 s, not after the store's 6 s socket timeout and redis-py's retries; with no time left,
    nothing is sent at all. The connection is usable again once Redis is back."""
    import os
    import signal

    from seqrec.services.ranker.history_store import HistoryStoreUnavailable, RedisHistoryStore
    from seqrec.shared.deadlines import DeadlineExceeded, call_deadline
    from seqrec.shared.local_services import start_redis_cluster

    if topology == "standalone":
        redis_proc = start_redis(tmp_path / "redis")
        processes, url = [redis_proc.process], f"redis://{redis_proc.address}/0"
        stop = redis_proc.stop
    else:
        cluster = start_redis_cluster(tmp_path / "cluster")
        processes = [node.process for node in cluster.nodes]
        url, stop = cluster.url, cluster.stop
    store = RedisHistoryStore(url, timeout=6.0)
    try:
        assert store.read("u1", 10) == []  # connected
        for process in processes:
            os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with call_deadline(0.5), pytest.raises((HistoryStoreUnavailable, DeadlineExceeded)):
            store.read("u1", 10)
        assert time.monotonic() - started < 3.0  # the socket timeout alone is 6 s
        with call_deadline(-1.0), pytest.raises(DeadlineExceeded):
            store.read("u1", 10)
    finally:
        for process in processes:
            os.kill(process.pid, signal.SIGCONT)
    try:
        with call_deadline(5.0):
            assert store.read("u1", 10) == []
    finally:
        stop()
