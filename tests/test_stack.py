"""`seqrec up` end to end: every service as its own process on free ports, queried through the gateway."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from seqrec.services.demo_data import demo_items
from seqrec.services.stack import add_up_arguments, start_stack
from seqrec.shared.local_services import free_port
from seqrec.shared.registry import resolve_bundle
from tests.otlp_collector import OtlpCollector

CATALOG = set(demo_items()["item_id"])


def _post(url: str, payload: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _args(workdir: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_up_arguments(parser)
    return parser.parse_args(["--workdir", str(workdir), "--port", str(free_port()), "--epochs", "15",
                              "--no-progress", *extra])


@pytest.fixture(scope="module")
def collector():
    """An OTLP collector the stack's services export their traces to."""
    collector = OtlpCollector()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, collector):
    args = _args(tmp_path_factory.mktemp("stack"))
    exporting = {"SEQREC_OTLP_ENDPOINT": collector.address, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    before = {name: os.environ.get(name) for name in exporting}
    os.environ.update(exporting)  # the children inherit it
    try:
        running, root = start_stack(args, say=lambda _: None)
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    yield f"http://127.0.0.1:{args.port}", running, root
    running.stop()


def _ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_every_service_runs_as_its_own_process(stack):
    _, running, _ = stack
    names = [c.name for c in running.children]
    assert names == ["redis", "milvus-server", "embedder", "ranker", "trainer", "gateway"]  # --milvus auto
    assert len({c.process.pid for c in running.children}) == 6 and running.dead() is None
    state = json.loads((running.workdir / "stack.json").read_text())
    assert set(state) == set(names)


def test_the_four_query_types_through_the_gateway(stack):
    url, _, _ = stack
    payloads = [
        {"query_type": "item_to_item", "item_id": "s12e03", "filters": {"meta.genre": "kids"}, "top_k": 10},
        {"query_type": "user_to_item", "user_id": "user_0007", "top_k": 5},
        {"query_type": "contextual", "user_id": "user_0007", "item_id": "s05e02", "top_k": 10},
        {"query_type": "sequential", "session_items": ["s02e03", "s02e04", "s02e05"], "top_k": 10,
         "filters": {"meta.genre": "drama", "meta.in_stock": True}},
    ]
    for payload in payloads:
        status, body = _post(f"{url}/v1/recommend", payload)
        assert status == 200, body
        assert body["query_type"] == payload["query_type"] and body["fallback"] is None
        assert len(body["items"]) == payload["top_k"] and set(_ids(body)) <= CATALOG
        assert all(item["display_name"] for item in body["items"])
    _, similar = _post(f"{url}/v1/recommend", payloads[0])
    assert all(item["meta"]["genre"] == "kids" for item in similar["items"]) and "s12e03" not in _ids(similar)
    _, session = _post(f"{url}/v1/recommend", payloads[3])
    assert all(i["meta"]["genre"] == "drama" and i["meta"]["in_stock"] for i in session["items"])
    _, session = _post(f"{url}/v1/recommend", {**payloads[3], "filters": {}, "exclude_seen": True})
    assert "s02e06" in _ids(session)[:3]  # the next episode


def test_a_request_is_one_trace_across_gateway_ranker_and_embedder(stack, collector):
    """An unknown seed item with text: the gateway calls the ranker, which has the embedder embed the text.
    The caller's traceparent is continued; every service's spans arrive at the collector under its trace id,
    parent before child, and the log lines the request caused carry the trace id."""
    url, running, _ = stack
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    status, body = _post(f"{url}/v1/recommend", {"query_type": "item_to_item", "item_id": "brand-new-show",
                                                 "item_text": "a crime drama about detectives", "top_k": 3},
                         headers)
    assert status == 200 and body["fallback"] == "content", body
    status, _ = _post(f"{url}/v1/recommend", {"query_type": "item_to_item", "item_id": "no-such-show"}, headers)
    assert status == 404  # refused by the ranker: its log line carries the trace id too

    spans = collector.trace(trace_id, {"seqrec-gateway", "seqrec-ranker", "seqrec-embedder"})
    by_id = {s.span_id: s for s in spans}
    gateway = [s for s in spans if s.service == "seqrec-gateway" and s.name == "POST /v1/recommend"]
    assert len(gateway) == 2 and all(s.parent_span_id == caller_span for s in gateway)
    ranker = [s for s in spans if s.name == "seqrec.proto.v1.RankerService/ItemToItem"]
    assert {s.service for s in ranker} == {"seqrec-ranker"} and {by_id[s.parent_span_id].service for s in ranker} \
        == {"seqrec-gateway"}
    (embedder,) = [s for s in spans if s.service == "seqrec-embedder"]
    assert embedder.name == "seqrec.proto.v1.EmbedderService/Embed"
    assert by_id[embedder.parent_span_id].service == "seqrec-ranker"
    assert {s.name for s in spans if s.service == "seqrec-ranker"} >= {"milvus_search"}  # stages are spans
    logs = {c.name: c.log_path.read_text() for c in running.children if c.name in ("gateway", "ranker")}
    for name, text in logs.items():
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any(line.get("trace_id") == trace_id for line in lines), name


def test_unknown_user_gets_flagged_popularity(stack):
    url, _, _ = stack
    status, body = _post(f"{url}/v1/recommend", {"query_type": "user_to_item", "user_id": "nobody", "top_k": 5})
    assert status == 200 and body["fallback"] == "popularity" and len(body["items"]) == 5


def test_an_ingested_event_changes_user_to_item(stack):
    url, _, _ = stack
    query = {"query_type": "user_to_item", "user_id": "fresh_user", "top_k": 5}
    _, before = _post(f"{url}/v1/recommend", query)
    status, body = _post(f"{url}/v1/events", {"events": [{"user_id": "fresh_user", "item_id": "s18e01"},
                                                         {"user_id": "fresh_user", "item_id": "s18e02"}]})
    assert status == 200, body
    _, after = _post(f"{url}/v1/recommend", query)
    assert before["fallback"] == "popularity" and after["fallback"] is None
    assert _ids(after) != _ids(before) and "s18e03" in _ids(after)


def test_bad_requests_are_4xx_naming_the_field(stack):
    url, _, _ = stack
    status, body = _post(f"{url}/v1/recommend", {"query_type": "sequential", "session_items": ["s01e01"],
                                                 "top_k": "ten"})
    assert status == 400 and body["error"]["field"] == "top_k"
    status, body = _post(f"{url}/v1/recommend", {"query_type": "item_to_item", "item_id": "nope"})
    assert status == 404 and "item_id" in json.dumps(body)


def _own_copy(root: Path, tmp_path: Path) -> Path:
    """The live bundle in a root of its own (a bundle root is managed by one trainer at a time)."""
    bundle = resolve_bundle(root)
    return Path(shutil.copytree(bundle, tmp_path / "bundles" / bundle.name))


def test_schemathesis_cli_with_every_phase_finds_no_server_error(stack, tmp_path):
    """The command a user would run against the real stack, its coverage phase included (which found a 500 for
    an object where `query_type`'s string belongs); a small, seeded corpus here, bench/fuzz.py runs more."""
    base, _, _ = stack
    cli = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run([str(cli), "run", f"{base}/openapi.json", "--phases", "examples,coverage,fuzzing",
                           "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "25",
                           "--seed", "7", "--workers", "1", "--report-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "coverage" in proc.stdout.lower()


def test_up_reports_a_dead_child_and_stops_everything(stack, tmp_path):
    bundle = _own_copy(stack[2], tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "up", "--bundle", str(bundle),
                             "--workdir", str(tmp_path), "--port", str(port), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert any("seqrec is up" in line for line in proc.stdout), proc.stderr.read()
        state = json.loads((tmp_path / "stack.json").read_text())
        os.kill(state["ranker"]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert "ranker exited" in proc.stderr.read()
        for child in state.values():  # each child's whole process group: milvus-server's own children too
            _assert_group_gone(child["pid"])
    finally:
        proc.kill()


def _assert_group_gone(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {pgid} still running")


def test_up_on_milvus_lite_serves_and_stops_cleanly_on_sigterm(stack, tmp_path):
    bundle = _own_copy(stack[2], tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "up", "--bundle", str(bundle),
                             "--workdir", str(tmp_path), "--port", str(port), "--no-progress", "--milvus", "lite"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert any("seqrec is up" in line for line in proc.stdout), proc.stderr.read()
        state = json.loads((tmp_path / "stack.json").read_text())
        assert "milvus-lite" in state and "milvus-server" not in state
        status, body = _post(f"http://127.0.0.1:{port}/v1/recommend",
                             {"query_type": "item_to_item", "item_id": "s12e03", "filters": {"meta.genre": "kids"}})
        assert status == 200 and body["items"] and all(i["meta"]["genre"] == "kids" for i in body["items"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stderr.read()
        for child in state.values():
            with pytest.raises(ProcessLookupError):
                os.kill(child["pid"], 0)
    finally:
        proc.kill()
