"""Prometheus metrics of the ranker, embedder and trainer, scraped over HTTP from real servers.

Each server gets SEQREC_METRICS_ADDRESS; calls of known outcome go in, and /metrics must count them by method
and status code (bounded labels), time the ranker's stages, count fallbacks and unknown items, and name the
served bundle with its age.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqrec.proto.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc, ranker_pb2, ranker_pb2_grpc
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env, SettingsError
from tests.test_fuzz_grpc import fuzz_bundle, running_ranker, wait_serving


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def ranker(tmp_path_factory, redis_server, milvus_server) -> Iterator[tuple[ranker_pb2_grpc.RankerServiceStub, int]]:
    port = free_port()
    bundle = fuzz_bundle(tmp_path_factory.getbasetemp())
    with running_ranker(bundle, redis_server.address, milvus_server,
                        SEQREC_METRICS_ADDRESS=f"127.0.0.1:{port}") as address:
        with grpc.insecure_channel(address) as channel:
            yield ranker_pb2_grpc.RankerServiceStub(channel), port


def test_the_ranker_counts_calls_stages_fallbacks_and_names_its_bundle(ranker):
    stub, port = ranker
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    known_user = info.example_user_ids[0]
    for _ in range(3):
        answer = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=known_user, top_k=5), timeout=10)
        assert answer.fallback == common_pb2.FALLBACK_NONE
    stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="nobody-at-all", top_k=5), timeout=10)
    unknown = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["no-such-item", "nor-this"], top_k=5),
                              timeout=10)
    assert list(unknown.unknown_items) == ["no-such-item", "nor-this"]
    with pytest.raises(grpc.RpcError) as refused:
        stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=known_user, top_k=-1), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    samples = scrape(port)
    assert sample(samples, "seqrec_ranker_rpcs_total", method="UserToItem", code="OK") == 4
    assert sample(samples, "seqrec_ranker_rpcs_total", method="UserToItem", code="INVALID_ARGUMENT") == 1
    assert sample(samples, "seqrec_ranker_rpcs_total", method="Sequential", code="OK") == 1
    assert sample(samples, "seqrec_ranker_rpc_duration_seconds_count", method="UserToItem", code="OK") == 4
    assert sample(samples, "seqrec_ranker_recommendations_total", method="UserToItem", fallback="none") == 3
    assert sample(samples, "seqrec_ranker_recommendations_total", method="UserToItem", fallback="popularity") == 1
    assert sample(samples, "seqrec_ranker_unknown_items_total", method="Sequential") == 2
    # three model answers: three encoder runs and three searches; each valid user_to_item read a history
    # (the refused one failed on top_k before reading)
    assert sample(samples, "seqrec_ranker_stage_duration_seconds_count", stage="encoder") == 3
    assert sample(samples, "seqrec_ranker_stage_duration_seconds_count", stage="milvus_search") == 3
    assert sample(samples, "seqrec_ranker_stage_duration_seconds_count", stage="redis_history") == 4
    assert sample(samples, "seqrec_ranker_model_info", version=info.bundle_version) == 1
    age = sample(samples, "seqrec_ranker_bundle_age_seconds")
    assert 0 < age < 7 * 24 * 3600 and math.isfinite(age)
    methods = {dict(labels).get("method") for name, labels in samples if name == "seqrec_ranker_rpcs_total"}
    assert methods <= {m.name for m in ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].methods} | {"other"}


def test_the_embedder_counts_its_calls(minilm):
    from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings

    port = free_port()
    app = EmbedderApp(EmbedderSettings.from_env(Env({
        "SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}", "SEQREC_EMBEDDER_MAX_BATCH": "4",
        "SEQREC_HEALTH_INTERVAL_S": "0.5", "SEQREC_METRICS_ADDRESS": f"127.0.0.1:{port}"})), model=minilm)
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            wait_serving(channel, "seqrec.proto.v1.EmbedderService")
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            stub.Embed(embedder_pb2.EmbedRequest(texts=["a red apple", "a green pear"]), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Embed(embedder_pb2.EmbedRequest(texts=["x"] * 5), timeout=30)
        samples = scrape(port)
    finally:
        app.stop(0)
    assert sample(samples, "seqrec_embedder_rpcs_total", method="Embed", code="OK") == 1
    assert sample(samples, "seqrec_embedder_rpcs_total", method="Embed", code="INVALID_ARGUMENT") == 1


def test_a_malformed_metrics_address_is_refused_naming_the_variable():
    from seqrec.services.ranker.server import RankerSettings

    with pytest.raises(SettingsError, match="SEQREC_METRICS_ADDRESS"):
        RankerSettings.from_env(Env({"SEQREC_BUNDLE": "/b", "SEQREC_METRICS_ADDRESS": "no-port-here"}))


def test_the_trainer_counts_unary_calls_and_streams(tmp_path, redis_server, milvus_server):
    from seqrec.proto.v1 import trainer_pb2, trainer_pb2_grpc
    from seqrec.services.trainer.server import TrainerApp, TrainerSettings

    port = free_port()
    app = TrainerApp(TrainerSettings.from_env(Env({
        "SEQREC_BUNDLE_ROOT": str(tmp_path / "bundles"), "SEQREC_DATA_ROOT": str(tmp_path),
        "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}", "REDIS_URL": f"redis://{redis_server.address}/7",
        "MILVUS_URI": milvus_server, "SEQREC_HEALTH_INTERVAL_S": "0.5",
        "SEQREC_METRICS_ADDRESS": f"127.0.0.1:{port}"})))
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            wait_serving(channel, "seqrec.proto.v1.TrainerService")
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            stub.ListJobs(trainer_pb2.ListJobsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                for _ in stub.StreamProgress(trainer_pb2.JobRef(), timeout=10):
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetJob(trainer_pb2.JobRef(job_id="no-such-job"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        samples = scrape(port)
    finally:
        app.stop(0)
    assert sample(samples, "seqrec_trainer_rpcs_total", method="ListJobs", code="OK") == 1
    assert sample(samples, "seqrec_trainer_rpcs_total", method="StreamProgress", code="INVALID_ARGUMENT") == 1
    assert sample(samples, "seqrec_trainer_rpcs_total", method="GetJob", code="NOT_FOUND") == 1


def test_every_metric_the_dashboard_plots_is_exported():
    """deploy/grafana/seqrec-dashboard.json only queries metric names the services really export."""
    import json
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    from seqrec.services.gateway.metrics import GatewayMetrics
    from seqrec.services.ranker.metrics import RankerMetrics
    from seqrec.shared.service_metrics import ServiceMetrics

    ranker, gateway = RankerMetrics(), GatewayMetrics()
    embedder, trainer = ServiceMetrics("embedder", ["Embed"]), ServiceMetrics("trainer", ["ListJobs"])
    for metrics, method in ((ranker, "UserToItem"), (embedder, "Embed"), (trainer, "ListJobs")):
        metrics.observe_rpc(f"/x/{method}", grpc.StatusCode.OK, 0.01)  # labelled series exist once observed
    ranker.answered("UserToItem", common_pb2.FALLBACK_NONE, 1)
    ranker.serving("20261201T000000Z-abcd", "2026-12-01T00:00:00+00:00")
    with ranker.stage("encoder"):
        pass
    ranker.served_lists.labels("v").inc()
    ranker.attributed_events.labels("v", "click", "hit").inc()
    gateway.observe_http("/v1/recommend", "user_to_item", 200, 0.01)
    registries = [ranker.registry, gateway.registry, embedder.registry, trainer.registry]
    exported = {s.name for r in registries
                for family in text_string_to_metric_families(generate_latest(r).decode()) for s in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[1] / "deploy/grafana/seqrec-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"seqrec_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported
