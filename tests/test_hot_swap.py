"""Publishing while the ranker serves: the new version is swapped in under load, no call fails; rollback too."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.publish import publish, rollback
from seqrec.services.ranker.server import RankerApp
from tests.test_ranker import _settings, _wait_health


def _copies(tmp_path: Path, *bundles: Path) -> list[Path]:
    """The bundles copied into one bundle root (`tmp_path`), each under its version name."""
    return [Path(shutil.copytree(bundle, tmp_path / bundle.name)) for bundle in bundles]


@contextmanager
def _ranker_following(root: Path, redis_url: str, milvus: str,
                      interval: str) -> Iterator[tuple[RankerApp, ranker_pb2_grpc.RankerServiceStub, grpc.Channel]]:
    """A ranker following `root`'s LIVE file every `interval` seconds, SERVING; stopped on exit."""
    app = RankerApp(_settings(root, redis_url, milvus, SEQREC_RELOAD_INTERVAL_S=interval))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        yield app, ranker_pb2_grpc.RankerServiceStub(channel), channel
    finally:
        channel.close()
        app.stop(0)


def _wait_version(stub, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s3e1"], top_k=3), timeout=5).model_version \
            != version:
        assert time.monotonic() < deadline, f"ranker never switched to {version}"
        time.sleep(0.1)


def test_publish_and_rollback_swap_versions_without_failed_calls(trained_bundle, cold_bundle, redis_server,
                                                                milvus_server, tmp_path):
    first, second = _copies(tmp_path, trained_bundle[0], cold_bundle[0])
    redis_url = f"redis://{redis_server.address}/0"
    publish(first, redis_url, milvus_server, progress=False)
    errors: list[Exception] = []
    versions: set[str] = set()
    stop = threading.Event()
    with _ranker_following(tmp_path, redis_url, milvus_server, "0.2") as (_, stub, _):

        def traffic() -> None:
            while not stop.is_set():
                try:
                    got = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="u5", top_k=5), timeout=5)
                    versions.add(got.model_version)
                except grpc.RpcError as exc:
                    errors.append(exc)

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        try:
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
    assert not errors, errors[:3]
    assert versions == {first.name, second.name}


def _corrupt(bundle: Path) -> None:
    """Flip the last byte of the item vectors: the checksum no longer matches."""
    target = bundle / "item_vectors.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))


def test_a_ranker_started_on_a_corrupted_live_bundle_serves_the_last_good_one(trained_bundle, cold_bundle,
                                                                             redis_server, milvus_server, tmp_path):
    first, second = _copies(tmp_path, trained_bundle[0], cold_bundle[0])
    redis_url = f"redis://{redis_server.address}/0"
    publish(first, redis_url, milvus_server, progress=False)
    publish(second, redis_url, milvus_server, progress=False)
    _corrupt(second)  # LIVE names it, e.g. a disk fault after the publication
    with _ranker_following(tmp_path, redis_url, milvus_server, "0.2") as (app, stub, _):
        assert stub.GetModelInfo(common_pb2.GetModelInfoRequest()).bundle_version == first.name
        assert second.name in app.refused and "sha256" in app.refused[second.name]
        started = time.monotonic()
        assert app.reload_if_changed() is False  # remembered: not verified again
        assert time.monotonic() - started < 0.5
        assert f"refused bundle {second.name}" in app.health.reason


def test_the_bundle_watcher_survives_a_milvus_outage_and_follows_live_after_it(trained_bundle, cold_bundle,
                                                                              redis_server, milvus_server, tmp_path):
    """While Milvus cannot answer, the watcher backs off and says why; once it answers, the swap happens."""
    from seqrec.services.ranker.vector_store import MilvusItemStore
    from seqrec.shared.local_services import free_port

    first, second = _copies(tmp_path, trained_bundle[0], cold_bundle[0])
    redis_url = f"redis://{redis_server.address}/0"
    publish(first, redis_url, milvus_server, progress=False)
    with _ranker_following(tmp_path, redis_url, milvus_server, "0.1") as (app, stub, _):
        reachable = app.items
        try:
            app.items = MilvusItemStore(f"http://127.0.0.1:{free_port()}", timeout=0.5)  # nothing listens there
            publish(second, redis_url, milvus_server, progress=False)
            deadline = time.monotonic() + 20
            while "following LIVE failed" not in app.watch_problem:
                assert time.monotonic() < deadline, "the watcher never reported the outage"
                time.sleep(0.1)
            assert app._watcher.is_alive()
            app.items = reachable
            _wait_version(stub, second.name, timeout=90)
            assert app.watch_problem == ""
        finally:
            app.items = reachable
