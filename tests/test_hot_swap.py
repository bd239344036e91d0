"""Publishing while the ranker serves: the new version is swapped in under load, no call fails; rollback too."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from seqrec.proto.v1 import ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.publish import publish, rollback
from seqrec.services.ranker.server import RankerApp
from tests.test_ranker import _settings, _wait_health


def _wait_version(stub, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s3e1"], top_k=3), timeout=5).model_version \
            != version:
        assert time.monotonic() < deadline, f"ranker never switched to {version}"
        time.sleep(0.1)


def test_publish_and_rollback_swap_versions_without_failed_calls(trained_bundle, cold_bundle, redis_server,
                                                                milvus_server, tmp_path):
    first, second = (shutil.copytree(p, tmp_path / p.name) for p in (trained_bundle[0], cold_bundle[0]))
    redis_url = f"redis://{redis_server.address}/0"
    publish(first, redis_url, milvus_server, progress=False)
    app = RankerApp(_settings(tmp_path, redis_url, milvus_server, SEQREC_RELOAD_INTERVAL_S="0.2"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    errors: list[Exception] = []
    versions: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                got = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="u5", top_k=5), timeout=5)
                versions.add(got.model_version)
            except grpc.RpcError as exc:
                errors.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        for w in workers:
            w.start()
        publish(second, redis_url, milvus_server, progress=False)
        _wait_version(stub, second.name)
        rollback(tmp_path, redis_url, milvus_server)
        _wait_version(stub, first.name)
    finally:
        stop.set()
        for w in workers:
            w.join()
        channel.close()
        app.stop(0)
    assert not errors, errors[:3]
    assert versions == {first.name, second.name}
