"""The slim Python client (clients/python), for real: its wheel built from the repository installs into a fresh
virtual environment with nothing but grpcio and protobuf at the lowest versions it claims to support, and its
example runs there against a real ranker (Redis, Milvus); over TLS with an API key it calls a real gateway
front door, and refusals arrive as `SeqrecError`s naming the field."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from seqrec.client import GatewayClient, RankerClient, SeqrecError, Tls, filters, interaction
from seqrec.proto.v1 import common_pb2
from tests.test_fuzz_grpc import fuzz_bundle, running_ranker
from tests.test_tls import gateway_settings, pki, server_env  # noqa: F401 (pki is a fixture)

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
LOWEST = {"grpcio": "1.85.1", "protobuf": "7.35.1"}  # the lower bounds of clients/python/pyproject.toml


@pytest.fixture(scope="module")
def ranker(tmp_path_factory, redis_server, milvus_server) -> Iterator[str]:
    bundle = fuzz_bundle(tmp_path_factory.getbasetemp())
    with running_ranker(bundle, redis_server.address, milvus_server) as address:
        yield address


def build_wheel(out: Path) -> Path:
    """The client's wheel, built by pip from clients/python (with this environment's setuptools where it has it)."""
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, str(CLIENT),
                    "-w", str(out)], check=True, timeout=300)
    (wheel,) = out.glob("seqrec_client-*.whl")
    return wheel


def test_the_wheel_holds_the_client_and_typed_stubs_and_needs_grpcio_and_protobuf_only(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {"seqrec/client/py.typed", "seqrec/proto/py.typed", "seqrec/proto/v1/ranker_pb2.pyi",
            "seqrec/proto/v1/gateway_pb2_grpc.pyi", "seqrec/client/clients.py"} <= names
    assert not any(n.startswith(("seqrec/shared", "seqrec/services")) for n in names)
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:"))
    assert requires == [f"grpcio<2,>={LOWEST['grpcio']}", f"protobuf<8,>={LOWEST['protobuf']}"]


def test_the_example_runs_from_a_fresh_environment_with_the_lowest_supported_versions(tmp_path, ranker):
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pins = [f"{name}=={version}" for name, version in LOWEST.items()]
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel), *pins], check=True, timeout=600)
    listed = json.loads(subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True,
                                       capture_output=True, text=True).stdout)
    installed = {p["name"].lower(): p["version"] for p in listed}
    assert installed["grpcio"] == LOWEST["grpcio"] and installed["protobuf"] == LOWEST["protobuf"]
    assert not {"numpy", "seqrec", "googleapis-common-protos", "grpcio-status"} & set(installed)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([python, str(CLIENT / "examples" / "recommend.py"), "--ranker", ranker], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("model ") and lines[1].startswith("user_to_item ")
    clicked = re.fullmatch(r"clicked (\S+): accepted 1, newest in history \['(\S+)'\]", lines[2])
    assert clicked and clicked[1] == clicked[2]  # the click is the newest event of the user's history
    assert lines[3] == "refused: INVALID_ARGUMENT on field top_k"
    assert lines[4].startswith("filtered on ")


@pytest.fixture(scope="module")
def tls_gateway(pki, ranker) -> Iterator[str]:  # noqa: F811
    """The gateway's gRPC front door over TLS with API keys, in front of the plaintext ranker."""
    from seqrec.services.gateway.grpc_front import GrpcFrontDoor
    from seqrec.services.gateway.metrics import GatewayMetrics

    door = GrpcFrontDoor(gateway_settings(ranker, **server_env(pki["ca"].issue("gateway")),
                                          SEQREC_API_KEYS="client-key-1"), GatewayMetrics())
    door.start()
    try:
        yield f"127.0.0.1:{door.port}"
    finally:
        door.stop(0)


def test_the_gateway_over_tls_with_an_api_key_and_its_refusals(pki, tls_gateway, ranker):  # noqa: F811
    tls = Tls.from_files(ca=pki["ca"].pem)
    with RankerClient(ranker) as direct:
        info = direct.model_info()
    column = next(c for c in info.metadata_columns)
    with GatewayClient(tls_gateway, tls=tls, api_key="client-key-1", timeout=10) as client:
        answer = _when_ready(lambda: client.user_to_item(info.example_user_ids[0], top_k=4))
        assert len(answer.items) == 4 and answer.recommendation_id
        first = answer.items[0]
        kind, value = first.meta[column].ListFields()[0]
        kept = client.sequential([first.item_id], top_k=4, filters=[filters.equals(column, value)])
        assert kept.items and all(item.meta[column] == first.meta[column] for item in kept.items)
        with pytest.raises(SeqrecError) as refused:
            client.user_to_item("u", top_k=-1)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.field == "top_k"
        with pytest.raises(SeqrecError) as unknown:
            client.sequential([first.item_id], filters=[filters.equals("no_such_column", 1)])
        assert unknown.value.field == "filters" and "no_such_column" in unknown.value.message
        with pytest.raises(SeqrecError) as late:
            client.sequential([first.item_id], timeout=1e-6)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with GatewayClient(tls_gateway, tls=tls, api_key="wrong-key-1") as client, pytest.raises(SeqrecError) as denied:
        client.user_to_item("u")
    assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
    with GatewayClient(tls_gateway, api_key="client-key-1") as client, pytest.raises(SeqrecError) as plain:
        client.user_to_item("u")
    assert plain.value.code == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port never connects


def _when_ready(call, attempts: int = 50):
    """The gateway answers UNAVAILABLE until its first health check of the ranker succeeds."""
    for _ in range(attempts - 1):
        try:
            return call()
        except SeqrecError as error:
            if error.code != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.2)
    return call()


def test_filter_helpers_and_events_build_the_messages_the_api_documents():
    assert filters.equals("genre", "drama") == common_pb2.FilterClause(
        field="meta.genre", equals=common_pb2.MetadataValue(string_value="drama"))
    assert filters.equals("meta.in_stock", True).equals.bool_value is True  # a bool is not an int here
    assert filters.any_of("year", [1999, 2001]).any_of.values[1].int_value == 2001
    assert filters.between("price", gte=1, lt=20.5).range == common_pb2.NumericRange(gte=1.0, lt=20.5)
    for bad, error in ((lambda: filters.between("price"), ValueError), (lambda: filters.equals("", 1), ValueError),
                       (lambda: filters.value({"a": 1}), TypeError), (lambda: filters.any_of("x", [[1]]), TypeError)):
        with pytest.raises(error):
            bad()
    first, second = interaction("u", "i", event_type="purchase"), interaction("u", "i", at=1_700_000_000_000)
    assert first.event_id and first.event_id != second.event_id  # every event gets an id: retries are safe
    assert first.event_type == common_pb2.EVENT_TYPE_PURCHASE and second.timestamp_ms == 1_700_000_000_000
    with pytest.raises(ValueError, match="timezone-aware"):
        interaction("u", "i", at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="Tls: give both"):
        Tls(certificate_chain=b"x")
