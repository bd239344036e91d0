"""Optional TLS and mutual TLS between services (shared/tls.py), for real: a throwaway CA and certificates made
with `cryptography`, a real embedder (MiniLM) serving TLS or mTLS and the ranker's embedder client calling it,
and a real ranker over TLS behind the gateway's HTTP API and gRPC front door."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from seqrec.proto.v1 import gateway_pb2, gateway_pb2_grpc, ranker_pb2
from seqrec.services.embedder.client import EmbedderClient, EmbedderUnavailable
from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import PLAINTEXT, TlsSettings, open_channel
from tests.test_fuzz_grpc import fuzz_bundle, running_ranker, wait_serving

pytest.importorskip("cryptography.x509")
from seqrec.shared.certs import Authority  # noqa: E402

EMBEDDER_SERVICE = "seqrec.proto.v1.EmbedderService"


# ---- a throwaway PKI, from the product's own `seqrec certs` code -----------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca, other = Authority(root, "seqrec"), Authority(root, "rogue")
    return {"ca": ca, "other": other, "server": ca.issue("embedder"), "client": ca.issue("ranker"),
            "rogue": other.issue("intruder"), "named": ca.issue("named", dns=("embedder.seqrec.internal",), ips=())}


def server_env(cert_key: tuple[Path, Path], client_ca: Path | None = None) -> dict[str, str]:
    env = {"SEQREC_TLS_CERT": str(cert_key[0]), "SEQREC_TLS_KEY": str(cert_key[1])}
    if client_ca is not None:
        env["SEQREC_TLS_CLIENT_CA"] = str(client_ca)
    return env


def client_tls(ca: Path | None, cert_key: tuple[Path, Path] | None = None, server_name: str = "") -> TlsSettings:
    env = {"SEQREC_TLS_CA": str(ca)} if ca else {}
    if cert_key:
        env.update({"SEQREC_TLS_CERT": str(cert_key[0]), "SEQREC_TLS_KEY": str(cert_key[1])})
    if server_name:
        env["SEQREC_TLS_SERVER_NAME"] = server_name
    return TlsSettings.from_env(Env(env))


@pytest.fixture(scope="module")
def start_embedder(minilm) -> Iterator[Any]:
    """Starts real embedders (sharing one loaded MiniLM) with the given environment; yields the starter."""
    apps: list[EmbedderApp] = []

    def start(**env: str) -> str:
        settings = EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}",
                                                  "SEQREC_EMBEDDER_DEVICE": "cpu", **env}))
        app = EmbedderApp(settings, model=minilm)
        app.start()
        apps.append(app)
        return f"127.0.0.1:{app.port}"

    yield start
    for app in apps:
        app.stop(0)


def embeds(target: str, tls: TlsSettings) -> bool:
    """True when the ranker's embedder client gets an embedding; False when the connection is refused."""
    client = EmbedderClient(target, timeout=5.0, tls=tls)
    try:
        return client.embed(["a drama series about a hospital"]).shape == (1, 384)
    except EmbedderUnavailable:
        return False
    finally:
        client.close()


# ---- settings ---------------------------------------------------------------------------------------------------


def test_settings(pki, tmp_path):
    assert TlsSettings.from_env(Env({})) == PLAINTEXT
    assert PLAINTEXT.describe() == "server plaintext, peers plaintext" and PLAINTEXT.server_credentials() is None
    cert, key = pki["server"]
    full = TlsSettings.from_env(Env({**server_env(pki["server"], pki["ca"].pem), "SEQREC_TLS_CA": str(pki["ca"].pem)}))
    assert full.serves_tls and full.mutual and full.dials_tls and full.describe() == "server mtls, peers tls"
    assert key.read_bytes() not in repr(full).encode()  # the key never shows in logs or tracebacks
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    for env, message in (
        ({"SEQREC_TLS_CERT": str(cert)}, "SEQREC_TLS_CERT and SEQREC_TLS_KEY: set both"),
        ({"SEQREC_TLS_KEY": str(key)}, "SEQREC_TLS_CERT and SEQREC_TLS_KEY: set both"),
        ({"SEQREC_TLS_CERT": str(tmp_path / "missing.pem"), "SEQREC_TLS_KEY": str(key)},
         "SEQREC_TLS_CERT: cannot read"),
        ({"SEQREC_TLS_CERT": str(cert), "SEQREC_TLS_KEY": str(not_pem)}, "SEQREC_TLS_KEY: .* not a PEM file"),
        ({"SEQREC_TLS_CERT": str(cert), "SEQREC_TLS_KEY": str(cert)}, "SEQREC_TLS_KEY: .* PRIVATE KEY"),
        ({"SEQREC_TLS_CLIENT_CA": str(pki["ca"].pem)}, "SEQREC_TLS_CLIENT_CA: mutual TLS needs"),
        ({"SEQREC_TLS_SERVER_NAME": "ranker"}, "SEQREC_TLS_SERVER_NAME: only meaningful with SEQREC_TLS_CA"),
    ):
        with pytest.raises(SettingsError, match=message) as err:
            TlsSettings.from_env(Env(env))
        assert "PRIVATE KEY-----" not in str(err.value)
    with pytest.raises(SettingsError, match="SEQREC_TLS_CA"):  # every service refuses to start with it
        EmbedderSettings.from_env(Env({"SEQREC_TLS_CA": str(not_pem)}))


# ---- a real embedder over TLS and mutual TLS --------------------------------------------------------------------


def test_embedder_over_tls(pki, start_embedder):
    target = start_embedder(**server_env(pki["server"]))
    with open_channel(target, client_tls(pki["ca"].pem)) as channel:
        wait_serving(channel, EMBEDDER_SERVICE)
    assert embeds(target, client_tls(pki["ca"].pem))  # the CA → OK
    assert not embeds(target, PLAINTEXT)  # without TLS → refused
    assert not embeds(target, client_tls(pki["other"].pem))  # a CA that did not sign the server's certificate
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_name_override(pki, start_embedder):
    target = start_embedder(**server_env(pki["named"]))  # a certificate for embedder.seqrec.internal only
    assert not embeds(target, client_tls(pki["ca"].pem))  # 127.0.0.1 is not in it
    assert embeds(target, client_tls(pki["ca"].pem, server_name="embedder.seqrec.internal"))


def test_mutual_tls_refuses_clients_without_a_certificate(pki, start_embedder):
    target = start_embedder(**server_env(pki["server"], client_ca=pki["ca"].pem))
    assert embeds(target, client_tls(pki["ca"].pem, pki["client"]))  # a certificate from the client CA → OK
    assert not embeds(target, client_tls(pki["ca"].pem))  # TLS without a client certificate → refused
    assert not embeds(target, client_tls(pki["ca"].pem, pki["rogue"]))  # a certificate from another CA → refused
    assert not embeds(target, PLAINTEXT)


def test_embedder_client_reads_the_environment(pki, start_embedder, monkeypatch):
    target = start_embedder(**server_env(pki["server"]))
    monkeypatch.setenv("SEQREC_TLS_CA", str(pki["ca"].pem))  # what a training process inherits from the trainer
    client = EmbedderClient(target, timeout=5.0)
    try:
        assert client.embed(["text"]).shape == (1, 384)
    finally:
        client.close()


# ---- the gateway in front of a ranker over TLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ranker(pki, tmp_path_factory, redis_server, milvus_server) -> Iterator[str]:
    """A real ranker that serves mutual TLS (clients need a certificate from the CA)."""
    bundle = fuzz_bundle(tmp_path_factory.getbasetemp())
    with running_ranker(bundle, redis_server.address, milvus_server,
                        **server_env(pki["server"], client_ca=pki["ca"].pem), SEQREC_TLS_CA=str(pki["ca"].pem)
                        ) as address:
        yield address


def gateway_settings(ranker: str, **env: str):
    from seqrec.services.gateway.settings import GatewaySettings

    return GatewaySettings.from_env(Env({"SEQREC_RANKER": ranker, "SEQREC_HEALTH_INTERVAL_S": "0.2",
                                         "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{free_port()}", **env}))


def test_gateway_http_to_a_ranker_over_mutual_tls(pki, tls_ranker):
    from seqrec.services.gateway.http_app import create_app

    query = {"query_type": "sequential", "session_items": ["i000001", "i000002"], "top_k": 3}
    tls = {"SEQREC_TLS_CA": str(pki["ca"].pem), "SEQREC_TLS_CERT": str(pki["client"][0]),
           "SEQREC_TLS_KEY": str(pki["client"][1])}
    with TestClient(create_app(gateway_settings(tls_ranker, **tls))) as client:
        assert client.get("/readyz").status_code == 200
        answer = client.post("/v1/recommend", json=query)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    with TestClient(create_app(gateway_settings(tls_ranker, SEQREC_TLS_CA=str(pki["ca"].pem)))) as client:
        assert client.post("/v1/recommend", json=query).status_code == 503  # no client certificate: refused
        assert client.get("/readyz").status_code == 503
    with TestClient(create_app(gateway_settings(tls_ranker))) as client:
        assert client.post("/v1/recommend", json=query).status_code == 503  # plaintext: refused


def test_gateway_front_door_over_tls(pki, tls_ranker):
    from seqrec.services.gateway.grpc_front import GrpcFrontDoor
    from seqrec.services.gateway.metrics import GatewayMetrics

    gateway_cert = pki["ca"].issue("gateway")
    door = GrpcFrontDoor(gateway_settings(tls_ranker, **server_env(gateway_cert), SEQREC_TLS_CA=str(pki["ca"].pem)),
                         GatewayMetrics())
    door.start()
    request = gateway_pb2.RecommendRequest(sequential=ranker_pb2.SequentialRequest(session_items=["i000001"], top_k=2))
    try:
        target = f"127.0.0.1:{door.port}"
        with open_channel(target, client_tls(pki["ca"].pem)) as channel:  # a caller of the gateway: TLS, no cert
            wait_serving(channel, "seqrec.proto.v1.RecommendService")  # the gateway reached the ranker over mTLS
            assert len(gateway_pb2_grpc.RecommendServiceStub(channel).Recommend(request, timeout=10).items) == 2
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
            gateway_pb2_grpc.RecommendServiceStub(channel).Recommend(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        door.stop(0)
