"""Closed by default (shared/exposure.py): every service refuses to listen beyond loopback without its
credentials (API keys for the gateway, mutual TLS for the gRPC services) unless SEQREC_ALLOW_INSECURE says so,
and a real `seqrec serve` exits 2 naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seqrec.services.embedder.server import EmbedderSettings
from seqrec.services.gateway.settings import GatewaySettings
from seqrec.services.ranker.server import RankerSettings
from seqrec.services.trainer.server import TrainerSettings
from seqrec.shared.certs import write_service_certs
from seqrec.shared.exposure import is_loopback
from seqrec.shared.settings import Env, SettingsError

KEY = "a-long-enough-key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    write_service_certs(root)
    return root


def _grpc_cases(tmp_path):
    return [(RankerSettings, "SEQREC_RANKER_ADDRESS", {"SEQREC_BUNDLE": str(tmp_path)}),
            (EmbedderSettings, "SEQREC_EMBEDDER_ADDRESS", {}),
            (TrainerSettings, "SEQREC_TRAINER_ADDRESS", {"SEQREC_BUNDLE_ROOT": str(tmp_path),
                                                        "SEQREC_DATA_ROOT": str(tmp_path)})]


def test_loopback_is_only_this_host():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.0.0.7", "ranker", "example.com"]))


@pytest.mark.parametrize("address", ["0.0.0.0:7000", "[::]:7000", "10.1.2.3:7000", "ranker:7000"])
def test_grpc_services_need_mutual_tls_beyond_loopback(address, certs, tmp_path, caplog):
    mtls = {"SEQREC_TLS_CERT": str(certs / "ranker.pem"), "SEQREC_TLS_KEY": str(certs / "ranker-key.pem"),
            "SEQREC_TLS_CLIENT_CA": str(certs / "ca.pem")}
    server_tls_only = {k: v for k, v in mtls.items() if k != "SEQREC_TLS_CLIENT_CA"}
    for settings, variable, base in _grpc_cases(tmp_path):
        for env in ({}, server_tls_only):  # plaintext, or TLS that lets anyone in: both refused
            with pytest.raises(SettingsError, match=rf"{variable}: .* no credentials .*SEQREC_TLS_CLIENT_CA"):
                settings.from_env(Env({**base, **env, variable: address}))
        assert settings.from_env(Env({**base, **mtls, variable: address})).address == address
        with caplog.at_level("WARNING"):
            got = settings.from_env(Env({**base, variable: address, "SEQREC_ALLOW_INSECURE": "true"}))
        assert got.address == address and "without credentials" in caplog.text
        assert settings.from_env(Env({**base, variable: "127.0.0.1:7000"})).address == "127.0.0.1:7000"


def test_the_gateway_needs_api_keys_beyond_loopback():
    with pytest.raises(SettingsError, match="SEQREC_GATEWAY_ADDRESS: 0.0.0.0:8080 is reachable beyond this host"):
        GatewaySettings.from_env(Env({"SEQREC_GATEWAY_ADDRESS": "0.0.0.0:8080"}))
    with pytest.raises(SettingsError, match="SEQREC_GATEWAY_GRPC_ADDRESS: 0.0.0.0:50050"):
        GatewaySettings.from_env(Env({"SEQREC_GATEWAY_GRPC_ADDRESS": "0.0.0.0:50050"}))
    keyed = GatewaySettings.from_env(Env({"SEQREC_GATEWAY_ADDRESS": "0.0.0.0:8080",
                                          "SEQREC_GATEWAY_GRPC_ADDRESS": "0.0.0.0:50050", "SEQREC_API_KEYS": KEY}))
    assert keyed.http_address == "0.0.0.0:8080" and keyed.grpc_address == "0.0.0.0:50050"
    assert GatewaySettings.from_env(Env({"SEQREC_GATEWAY_ADDRESS": "0.0.0.0:8080", "SEQREC_GATEWAY_GRPC_ADDRESS": "",
                                         "SEQREC_ALLOW_INSECURE": "1"})).grpc_address == ""


def test_a_real_service_refuses_to_start_open(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SEQREC_EMBEDDER_ADDRESS": "0.0.0.0:0", "SEQREC_LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "serve", "embedder"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "SEQREC_EMBEDDER_ADDRESS: 0.0.0.0:0 is reachable beyond this host" in done.stdout + done.stderr
