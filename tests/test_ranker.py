"""The ranker for real: a trained bundle published into redis-server and `milvus-lite server`, served
over gRPC on loopback, queried as a backend team would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.publish import publish, rollback
from seqrec.services.ranker.server import RankerApp, RankerSettings
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.history import encode_histories
from seqrec.shared.local_services import free_port, start_redis
from seqrec.shared.registry import resolve_bundle
from seqrec.shared.scoring import Scorer
from seqrec.shared.sequence_prior import SequencePrior
from seqrec.shared.settings import Env, SettingsError
from tests.conftest import bundle_before_gap_filling

SERVICE = "seqrec.proto.v1.RankerService"


def _settings(bundle: Path, redis_url: str, milvus_uri: str, **extra: str) -> RankerSettings:
    env = {"SEQREC_BUNDLE": str(bundle), "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{free_port()}",
           "REDIS_URL": redis_url, "MILVUS_URI": milvus_uri, "SEQREC_HEALTH_INTERVAL_S": "0.2", **extra}
    return RankerSettings.from_env(Env(env))


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status


def _wait_health(channel: grpc.Channel, wanted: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _health(channel) != wanted:
        assert time.monotonic() < deadline, f"health never became {wanted}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def published(trained_bundle, redis_server, milvus_server):
    path, _ = trained_bundle
    redis_url = f"redis://{redis_server.address}/0"
    publish(path, redis_url, milvus_server, progress=False)
    return path, redis_url, milvus_server


@pytest.fixture(scope="module")
def ranker(published):
    path, redis_url, milvus_uri = published
    app = RankerApp(_settings(path.parent, redis_url, milvus_uri))  # the bundle root: LIVE names the version
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    yield app, ranker_pb2_grpc.RankerServiceStub(channel), channel
    channel.close()
    app.stop(0)


def _offline_top_k(bundle: Bundle, histories: list[list[int]], k: int) -> list[list[int]]:
    """The answer computed straight from the bundle files: ONNX + the scoring contract + a stable argsort."""
    session = ort.InferenceSession(str(bundle.file("encoder.onnx")), providers=["CPUExecutionProvider"])
    intent = session.run(None, {"item_ids": encode_histories(histories, bundle.max_len, bundle.mask_index)})[0]
    scores = Scorer.from_bundle(bundle).scores(intent, histories)
    return [list(np.argsort(-row, kind="stable")[:k] + 1) for row in scores]


def test_online_equals_offline_for_many_users(ranker, published):
    _, stub, _ = ranker
    bundle = Bundle.open(published[0])
    vocab = bundle.vocab()
    rows = list(bundle.iter_jsonl(HISTORIES))[:60]
    histories = [vocab.encode(r["items"])[0][-(bundle.max_len - 1):] for r in rows]
    expected = _offline_top_k(bundle, histories, 10)
    for row, want in zip(rows, expected, strict=True):
        got = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=row["user_id"], top_k=10, exclude_seen=False))
        assert got.fallback == common_pb2.FALLBACK_NONE
        assert [i.item_id for i in got.items] == vocab.decode(want)
        assert got.sequence_length == min(len(row["items"]), bundle.max_len - 1)


def test_user_to_item_excludes_seen_by_default(ranker, published):
    _, stub, _ = ranker
    row = next(Bundle.open(published[0]).iter_jsonl(HISTORIES))
    got = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=row["user_id"], top_k=20))
    recent = set(row["items"][-(Bundle.open(published[0]).max_len - 1):])
    assert len(got.items) == 20 and not recent & {i.item_id for i in got.items}
    scores = [i.score for i in got.items]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_falls_back_to_popularity(ranker, published):
    _, stub, _ = ranker
    got = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="nobody-ever", top_k=5))
    assert got.fallback == common_pb2.FALLBACK_POPULARITY and len(got.items) == 5
    popularity = Bundle.open(published[0]).popularity()
    counts = [popularity[Bundle.open(published[0]).vocab().index(i.item_id)] for i in got.items]
    assert counts == sorted(counts, reverse=True)
    assert got.items[0].display_name.startswith("Series ")


def test_sequential_skips_unknown_items_and_predicts_the_next_episode(ranker):
    _, stub, _ = ranker
    got = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e0", "nope", "s4e1", "s4e2"], top_k=3))
    assert list(got.unknown_items) == ["nope"] and got.fallback == common_pb2.FALLBACK_NONE
    assert "s4e3" in [i.item_id for i in got.items]  # the model learned the series order
    assert got.items[0].meta["genre"].string_value == "comedy"
    none_known = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["x", "y"], top_k=4))
    assert none_known.fallback == common_pb2.FALLBACK_POPULARITY and len(none_known.items) == 4
    assert list(none_known.unknown_items) == ["x", "y"]


def test_gap_fills_the_missing_episode_from_both_sides(ranker):
    _, stub, _ = ranker
    got = stub.GapFill(ranker_pb2.GapRequest(session_items=["s4e0", "s4e1", "nope", "s4e3", "s4e4"], gap_position=2,
                                             top_k=3))
    assert [i.item_id for i in got.items][0] == "s4e2" and list(got.unknown_items) == ["nope"]
    assert got.sequence_length == 4 and not {"s4e0", "s4e1", "s4e3", "s4e4"} & {i.item_id for i in got.items}
    assert got.items[0].display_name.startswith("Series ")


def test_gap_online_equals_offline_in_stored_histories(ranker, published):
    """A gap in a user's stored history: exactly the ONNX gap row scored by the contract, the prior's transitions
    read from both sides of the gap (brute force over every item, seen ones kept)."""
    _, stub, _ = ranker
    bundle = Bundle.open(published[0])
    vocab = bundle.vocab()
    session = ort.InferenceSession(str(bundle.file("encoder.onnx")), providers=["CPUExecutionProvider"])
    scorer = Scorer.from_bundle(bundle)
    for n, row in enumerate(list(bundle.iter_jsonl(HISTORIES))[:20]):
        stored = stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id=row["user_id"])).item_ids
        position = [1, len(stored) // 2, len(stored) - 1][n % 3]
        before, after = vocab.encode(stored[:position])[0], vocab.encode(stored[position:])[0]
        ids = encode_histories([before], bundle.max_len, bundle.mask_index, following=[after])
        intent = session.run(None, {"item_ids": ids})[0]
        scores = scorer.scores(intent, [before], [after])
        want = [int(i) + 1 for i in np.argsort(-scores[0], kind="stable")[:10]]
        got = stub.GapFill(ranker_pb2.GapRequest(user_id=row["user_id"], gap_position=position, top_k=10,
                                                 exclude_seen=False))
        assert [i.item_id for i in got.items] == vocab.decode(want)
        assert np.allclose([i.score for i in got.items], scores[0][np.array(want) - 1], atol=1e-4)


def test_a_gap_after_the_last_item_is_the_sequential_query(ranker):
    _, stub, _ = ranker
    items = ["s2e0", "s2e1", "s6e3", "s2e2"]
    gap = stub.GapFill(ranker_pb2.GapRequest(session_items=items, gap_position=len(items), top_k=8))
    sequential = stub.Sequential(ranker_pb2.SequentialRequest(session_items=items, top_k=8, exclude_seen=True))
    assert [(i.item_id, round(i.score, 4)) for i in gap.items] == [(i.item_id, round(i.score, 4))
                                                                  for i in sequential.items]


@pytest.mark.parametrize("request_fields, field", [
    ({"session_items": ["s4e0", "s4e2"]}, "gap_position"),
    ({"session_items": ["s4e0", "s4e2"], "gap_position": 3}, "gap_position"),
    ({"session_items": ["s4e0", "s4e2"], "gap_position": -1}, "gap_position"),
    ({"session_items": ["s4e0"], "user_id": "u1", "gap_position": 1}, "user_id"),
    ({"gap_position": 0}, "user_id"),
    ({"user_id": "nobody-ever", "gap_position": 1}, "gap_position"),
])
def test_bad_gap_requests_are_invalid_argument_naming_the_field(ranker, request_fields, field):
    _, stub, _ = ranker
    with pytest.raises(grpc.RpcError) as err:
        stub.GapFill(ranker_pb2.GapRequest(**request_fields), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(f"{field}:")


def test_gap_needs_a_bundle_whose_encoder_answers_at_the_mask(published, tmp_path):
    """A bundle written before gap filling (no `gap_filling` in its manifest) is refused, not answered wrongly."""
    from seqrec.services.ranker.encoder import OnnxEncoder

    encoder = OnnxEncoder(Bundle.open(bundle_before_gap_filling(published[0], tmp_path / "old")))
    assert encoder.intents([[1, 2]]).shape[0] == 1
    with pytest.raises(ValueError, match="gap filling"):
        encoder.intents([[1]], following=[[2]])


@pytest.mark.parametrize("transition_weight, repeat_bias", [(2.0, -32.0), (0.5, 4.0)])
def test_the_sequence_prior_merges_exactly_into_the_milvus_search(ranker, published, transition_weight, repeat_bias):
    """With other prior weights too (seen items pushed last or lifted), the online answer, filtered or not,
    is the brute-force ranking of the full score over every item the filter accepts."""
    app, stub, _ = ranker
    bundle = Bundle.open(published[0])
    vocab = bundle.vocab()
    genre = {row["item_id"]: (row.get("meta") or {}).get("genre") for row in bundle.iter_jsonl("items.jsonl")}
    fitted = app.recommender.scorer
    app.recommender.scorer = scorer = fitted.with_prior(SequencePrior.from_bundle(bundle).weighted(transition_weight,
                                                                                                    repeat_bias))
    try:
        drama = _clause("meta.genre", equals=common_pb2.MetadataValue(string_value="drama"))
        session = ort.InferenceSession(str(bundle.file("encoder.onnx")), providers=["CPUExecutionProvider"])
        for row in list(bundle.iter_jsonl(HISTORIES))[:12]:
            items = row["items"][-6:] + row["items"][-6:-5]  # ends on a repeat: the first item again
            history = vocab.encode(items)[0]
            intent = session.run(None, {"item_ids": encode_histories([history], bundle.max_len, bundle.mask_index)})[0]
            scores = scorer.scores(intent, [history])
            order = [int(i) + 1 for i in np.argsort(-scores[0], kind="stable")]
            dramas = [i for i in order if genre.get(vocab.item_id(i)) == "drama"]
            for filters, want in (([], order[:10]), ([drama], dramas[:10])):
                got = stub.Sequential(ranker_pb2.SequentialRequest(session_items=items, filters=filters, top_k=10,
                                                                   exclude_seen=False))
                assert [i.item_id for i in got.items] == vocab.decode(want)
    finally:
        app.recommender.scorer = fitted


def test_contextual_appends_the_current_item(ranker):
    _, stub, _ = ranker
    got = stub.Contextual(ranker_pb2.ContextualRequest(user_id="nobody", item_id="s7e4", top_k=3))
    assert "s7e5" in [i.item_id for i in got.items] and "s7e4" not in {i.item_id for i in got.items}


def test_item_to_item(ranker):
    _, stub, _ = ranker
    got = stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="s2e3", top_k=5))
    ids = [i.item_id for i in got.items]
    assert len(ids) == 5 and "s2e3" not in ids
    with pytest.raises(grpc.RpcError) as err:
        stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="brand-new", top_k=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "item_id" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="brand-new", item_text="a new show", top_k=5))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _clause(field: str, **op) -> common_pb2.FilterClause:
    return common_pb2.FilterClause(field=field, **op)


def test_filters_are_honoured(ranker):
    _, stub, _ = ranker
    drama = _clause("meta.genre", equals=common_pb2.MetadataValue(string_value="drama"))
    in_stock = _clause("meta.in_stock", equals=common_pb2.MetadataValue(bool_value=True))
    for call, request in (
        (stub.Sequential, ranker_pb2.SequentialRequest(session_items=["s4e1"], filters=[drama, in_stock], top_k=10)),
        (stub.UserToItem, ranker_pb2.UserToItemRequest(user_id="nobody", filters=[drama, in_stock], top_k=10)),
        (stub.ItemToItem, ranker_pb2.ItemToItemRequest(item_id="s4e1", filters=[drama, in_stock], top_k=10)),
    ):
        got = call(request)
        assert len(got.items) == 10
        assert all(i.meta["genre"].string_value == "drama" and i.meta["in_stock"].bool_value for i in got.items)
    any_of = _clause("meta.genre", any_of=common_pb2.ValueList(values=[
        common_pb2.MetadataValue(string_value="docs"), common_pb2.MetadataValue(string_value="comedy")]))
    got = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], filters=[any_of], top_k=10))
    assert {i.meta["genre"].string_value for i in got.items} <= {"docs", "comedy"}


def test_rows_beside_the_search_come_from_memory_exactly_as_milvus_holds_them(ranker, published):
    """The rows the prior's merge reads beside a search (vector, id, display, filter verdict) come from the bundle in
    memory; they are the rows Milvus holds, for every filter; without Redis (which records online changes) they
    come from Milvus."""
    from seqrec.services.ranker.filters import build_expression
    from seqrec.services.ranker.history_store import RedisHistoryStore

    app, _, _ = ranker
    recommender = app.recommender
    indices = list(range(1, recommender.vocab.n_items + 1))
    drama = _clause("meta.genre", equals=common_pb2.MetadataValue(string_value="drama"))
    in_stock = _clause("meta.in_stock", equals=common_pb2.MetadataValue(bool_value=True))
    docs_or_comedy = _clause("meta.genre", any_of=common_pb2.ValueList(values=[
        common_pb2.MetadataValue(string_value="docs"), common_pb2.MetadataValue(string_value="comedy")]))

    def same(got: dict, want: dict) -> None:
        assert sorted(got) == sorted(want)
        for index, (row, item_id, display) in want.items():
            np.testing.assert_array_equal(got[index][0], row)
            assert got[index][1:] == (item_id, display)

    for clauses in ([], [drama], [drama, in_stock], [docs_or_comedy]):
        expr = build_expression(clauses, recommender.catalog.schema)
        want = recommender.items.rows(recommender.version, indices, expr)
        assert 0 < len(want) <= len(indices)
        same(recommender._rows(indices, clauses, expr), want)
    histories = recommender.histories
    recommender.histories = RedisHistoryStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        expr = build_expression([drama], recommender.catalog.schema)
        same(recommender._rows(indices, [drama], expr), recommender.items.rows(recommender.version, indices, expr))
    finally:
        recommender.histories = histories


@pytest.mark.parametrize("hostile", ['drama" or m_genre != "', '\\" || 1==1 #', "drama') or ('1'='1", "*"])
def test_hostile_filter_values_cannot_widen_the_query(ranker, hostile):
    _, stub, _ = ranker
    clause = _clause("meta.genre", equals=common_pb2.MetadataValue(string_value=hostile))
    got = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], filters=[clause], top_k=10))
    assert len(got.items) == 0


@pytest.mark.parametrize("clause,field", [
    (_clause("meta.brand", equals=common_pb2.MetadataValue(string_value="x")), "meta.brand"),
    (_clause("meta.in_stock", equals=common_pb2.MetadataValue(string_value="yes")), "meta.in_stock"),
    (_clause("genre", equals=common_pb2.MetadataValue(string_value="drama")), "genre"),
])
def test_bad_filters_are_invalid_argument_naming_the_field(ranker, clause, field):
    _, stub, _ = ranker
    with pytest.raises(grpc.RpcError) as err:
        stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], filters=[clause], top_k=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


@pytest.mark.parametrize("top_k", [-1, 1001])
def test_top_k_bounds(ranker, top_k):
    _, stub, _ = ranker
    with pytest.raises(grpc.RpcError) as err:
        stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=top_k))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in err.value.details()


def test_default_top_k_comes_from_the_bundle(ranker):
    _, stub, _ = ranker
    assert len(stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"])).items) == 10


def test_ingested_events_change_user_to_item_at_once(ranker):
    _, stub, _ = ranker
    user = "fresh-user"
    before = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=user, top_k=3))
    assert before.fallback == common_pb2.FALLBACK_POPULARITY
    events = [common_pb2.Interaction(user_id=user, item_id=f"s9e{e}", timestamp_ms=1000 + e) for e in (2, 0, 1)]
    assert stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events)).accepted == 3
    history = stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id=user))
    assert list(history.item_ids) == ["s9e0", "s9e1", "s9e2"] and list(history.timestamps_ms) == [1000, 1001, 1002]
    after = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=user, top_k=3))
    assert after.fallback == common_pb2.FALLBACK_NONE and "s9e3" in [i.item_id for i in after.items]


def test_bad_events_are_refused_whole(ranker):
    _, stub, _ = ranker
    events = [common_pb2.Interaction(user_id="u-bad", item_id="s1e1", timestamp_ms=5),
              common_pb2.Interaction(user_id="", item_id="s1e2", timestamp_ms=6)]
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[1]" in err.value.details()
    assert list(stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id="u-bad")).item_ids) == []


def test_retried_events_with_ids_are_applied_once(ranker):
    _, stub, _ = ranker
    events = [common_pb2.Interaction(user_id="u-retry", item_id=f"s2e{e}", timestamp_ms=1000 + e, event_id=f"id{e}")
              for e in (1, 0)]
    first = stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events))
    again = stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events))
    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (2, 0, 2, 2)
    assert list(stub.GetHistory(ranker_pb2.GetHistoryRequest(user_id="u-retry")).item_ids) == ["s2e0", "s2e1"]


@pytest.mark.parametrize(("event", "field"), [
    (dict(timestamp_ms=int(time.time() * 1000) + 86_400_000), "s in the future (more than the 300 s allowed"),
    (dict(event_id="x" * 513), "events[0].event_id: longer than 512"),
    (dict(item_id="i" * 513), "events[0].item_id: longer than 512"),
])
def test_events_from_the_future_or_with_overlong_ids_are_refused(ranker, event, field):
    _, stub, _ = ranker
    message = common_pb2.Interaction(**{"user_id": "u-future", "item_id": "s1e1", **event})
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=[message]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_a_session_longer_than_the_gateway_allows_is_refused_by_the_ranker_too(ranker):
    """Found by reading: a long session with exclude_seen reached Milvus and came back as INTERNAL."""
    _, stub, _ = ranker
    request = ranker_pb2.SequentialRequest(session_items=[f"s{n % 30}e{n % 8}" for n in range(1001)], top_k=5,
                                           exclude_seen=True)
    with pytest.raises(grpc.RpcError) as err:
        stub.Sequential(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "session_items: at most 1000" in err.value.details()


def test_more_events_than_the_gateway_allows_are_refused_by_the_ranker_too(ranker):
    _, stub, _ = ranker
    events = [common_pb2.Interaction(user_id="u-many", item_id="s1e1", timestamp_ms=n + 1) for n in range(1001)]
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in err.value.details()


def test_expired_deadline(ranker):
    """A call whose deadline is gone is DEADLINE_EXCEEDED, never another error (a 1 µs deadline can very
    rarely be met on loopback, so several tries)."""
    _, stub, _ = ranker
    codes = []
    for _ in range(5):
        try:
            stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"]), timeout=0.000001)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


def test_model_info(ranker, published):
    _, stub, _ = ranker
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest())
    assert info.bundle_version == Bundle.open(published[0]).version and info.max_len == 12
    assert set(info.metadata_columns) == {"genre", "in_stock"} and info.runtime.startswith("onnxruntime:")
    assert info.metrics.values["test_ndcg@10"] > 0


def test_query_cli_prints_the_json_answer(ranker):
    app, _, _ = ranker
    payload = {"query_type": "sequential", "session_items": ["s4e0", "s4e1"], "top_k": 2,
               "filters": {"meta.genre": "comedy"}}
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "query", "--ranker",
                           f"127.0.0.1:{app.port}", json.dumps(payload)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["query_type"] == "sequential" and answer["fallback"] is None
    assert len(answer["items"]) == 2 and all(i["meta"]["genre"] == "comedy" for i in answer["items"])
    assert set(answer["items"][0]) == {"item_id", "score", "display_name", "meta"}
    bad = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "query", "--ranker", f"127.0.0.1:{app.port}",
                          '{"query_type": "user_to_item"}'], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "user_id: required" in bad.stderr


def test_health_tracks_redis(trained_bundle, milvus_server, published, tmp_path):
    """NOT_SERVING while Redis is down, SERVING again once it is back, without restarting the ranker."""
    redis = start_redis(tmp_path / "redis")
    app = RankerApp(_settings(published[0], f"redis://{redis.address}/0", milvus_server))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    stub = ranker_pb2_grpc.RankerServiceStub(channel)
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        redis.kill()
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as err:
            stub.UserToItem(ranker_pb2.UserToItemRequest(user_id="u1", top_k=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in err.value.details()
        assert len(stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e1"], top_k=3)).items) == 3
        redis = start_redis(tmp_path / "redis", port=redis.port)
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    finally:
        channel.close()
        app.stop(0)
        redis.stop()


def test_not_serving_until_published(trained_bundle, redis_server, milvus_server, tmp_path):

    copy = tmp_path / "unpublished" / "v-unpublished"
    shutil.copytree(trained_bundle[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_version"] = f"unpublished{os.getpid()}"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    app = RankerApp(_settings(copy, f"redis://{redis_server.address}/0", milvus_server))
    app.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "missing" in app.health.reason
        channel.close()
    finally:
        app.stop(0)


def test_rollback_repoints_live(trained_bundle, published, tmp_path):
    root = published[0].parent
    assert resolve_bundle(root) == published[0]
    with pytest.raises(Exception, match="no earlier published version"):
        rollback(root, published[1], published[2])


def test_settings_errors_name_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="SEQREC_BUNDLE: required"):
        RankerSettings.from_env(Env({}))
    with pytest.raises(SettingsError, match="SEQREC_GRPC_WORKERS: expected an integer"):
        RankerSettings.from_env(Env({"SEQREC_BUNDLE": "x", "SEQREC_GRPC_WORKERS": "many"}))
    with pytest.raises(SettingsError, match="SEQREC_RANKER_ADDRESS: expected host:port"):
        RankerSettings.from_env(Env({"SEQREC_BUNDLE": "x", "SEQREC_RANKER_ADDRESS": "localhost"}))


def test_serve_ranker_stops_cleanly_on_sigterm(published):
    path, redis_url, milvus_uri = published
    port = free_port()
    env = {**os.environ, "SEQREC_BUNDLE": str(path), "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{port}",
           "REDIS_URL": redis_url, "MILVUS_URI": milvus_uri, "SEQREC_SHUTDOWN_GRACE_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "ranker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=30)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert {"ranker listening", "shutting down", "stopped"} <= {entry["msg"] for entry in logs}
    finally:
        proc.kill()


def test_serve_ranker_refuses_bad_settings():
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_BUNDLE"}
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "serve", "ranker"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "SEQREC_BUNDLE: required" in proc.stderr


def test_reflection_lists_the_services_when_enabled(published):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    path, redis_url, milvus_uri = published
    app = RankerApp(_settings(path, redis_url, milvus_uri, SEQREC_GRPC_REFLECTION="true"))
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            answer = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
            names = {s.name for s in answer.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
    finally:
        app.stop(0)
