"""Attribution end to end: every response carries a recommendation_id, events sent back with it are joined to
the list served (a real ranker on loopback, real Redis and Milvus), counted once per event by model version in
/metrics, and kept in the event log, whose export joins back to the served lists offline."""

from __future__ import annotations

import csv
import uuid

import grpc
import pytest

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.event_log import export_csv
from seqrec.services.ranker.history_store import RedisHistoryStore
from seqrec.shared.local_services import free_port
from tests.test_fuzz_grpc import FUZZ_REDIS_DB, fuzz_bundle, running_ranker
from tests.test_service_metrics import sample, scrape


@pytest.fixture
def ranker(tmp_path_factory, redis_server, milvus_server):
    port = free_port()
    bundle = fuzz_bundle(tmp_path_factory.getbasetemp())
    with running_ranker(bundle, redis_server.address, milvus_server, SEQREC_METRICS_ADDRESS=f"127.0.0.1:{port}",
                        SEQREC_RECOMMENDATION_TTL_S="600") as address:
        with grpc.insecure_channel(address) as channel:
            yield ranker_pb2_grpc.RankerServiceStub(channel), port, f"redis://{redis_server.address}/{FUZZ_REDIS_DB}"


def event(user: str, item: str, recommendation_id: str, kind: int, event_id: str | None = None):
    return common_pb2.Interaction(user_id=user, item_id=item, event_id=event_id or uuid.uuid4().hex,
                                  recommendation_id=recommendation_id, event_type=kind)


def test_events_are_joined_to_the_lists_served_once_each(ranker, tmp_path):
    stub, port, redis_url = ranker
    user = f"attr-{uuid.uuid4().hex[:8]}"  # a user of its own: the shared Redis database keeps other tests' logs
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    listed = stub.UserToItem(ranker_pb2.UserToItemRequest(user_id=info.example_user_ids[0], top_k=5), timeout=10)
    session = stub.Sequential(ranker_pb2.SequentialRequest(session_items=[listed.items[0].item_id], top_k=20),
                              timeout=10)
    assert listed.recommendation_id and session.recommendation_id != listed.recommendation_id
    served = {r.recommendation_id: (r.model_version, [i.item_id for i in r.items]) for r in (listed, session)}
    outside = next(i.item_id for i in session.items if i.item_id not in served[listed.recommendation_id][1])

    clicked = event(user, listed.items[2].item_id, listed.recommendation_id, common_pb2.EVENT_TYPE_CLICK)
    events = [clicked,
              event(user, outside, listed.recommendation_id, common_pb2.EVENT_TYPE_VIEW),  # miss
              event(user, session.items[0].item_id, session.recommendation_id, common_pb2.EVENT_TYPE_PURCHASE),
              event(user, outside, "never-served", common_pb2.EVENT_TYPE_CLICK),  # expired
              event(user, outside, "", common_pb2.EVENT_TYPE_UNSPECIFIED)]  # not attributed at all
    assert stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=events), timeout=10).accepted == 5
    retried = stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=[clicked]), timeout=10)
    assert retried.duplicates == 1  # acknowledged again, not counted again

    samples = scrape(port)
    version = info.bundle_version
    assert sample(samples, "seqrec_ranker_served_lists_total", version=version) >= 2
    counted = {(outcome, kind): sample(samples, "seqrec_ranker_attributed_events_total", version=v,
                                       event_type=kind, outcome=outcome)
               for outcome, kind, v in [("hit", "click", version), ("miss", "view", version),
                                        ("hit", "purchase", version), ("expired", "click", "")]}
    assert counted == {("hit", "click"): 1, ("miss", "view"): 1, ("hit", "purchase"): 1, ("expired", "click"): 1}

    # offline: the event log's export carries the ids and types, and joins back to the lists served
    out = tmp_path / "events.csv"
    RedisHistoryStore(redis_url).call(lambda client: export_csv(client, out))
    rows = [r for r in csv.DictReader(out.open()) if r["user_id"] == user]
    assert len(rows) == 5
    joined = [(r["event_type"], r["item_id"] in served[r["recommendation_id"]][1])
              for r in rows if r["recommendation_id"] in served]
    assert sorted(joined) == [("click", True), ("purchase", True), ("view", False)]


def test_an_unknown_event_type_is_refused_naming_the_field(ranker):
    stub = ranker[0]
    bad = common_pb2.Interaction(user_id="u", item_id="i", event_type=99)
    with pytest.raises(grpc.RpcError) as refused:
        stub.IngestEvents(ranker_pb2.IngestEventsRequest(events=[bad]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("events[0].event_type")
