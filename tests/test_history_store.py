"""User histories in a real Redis: ordering, acknowledgement, merge on publish, outages.

The store contract runs twice: against one redis-server (`redis://`) and against a real 3-master
Redis Cluster (`redis+cluster://`) of the same binary.
"""

import pytest
import redis

from seqrec.services.ranker import history_store
from seqrec.services.ranker.history_store import (
    Event,
    HistoryStoreUnavailable,
    RedisHistoryStore,
    history_key,
    history_slot,
    merge_entries,
    parse_cluster_url,
    redact_url,
)
from seqrec.shared.local_services import free_port


def test_append_and_read_in_timestamp_order(store_url):
    store = RedisHistoryStore(store_url)
    assert store.ping() is True
    assert store.append([Event("u1", "b", 2000), Event("u1", "a", 1000), Event("u2", "x", 5)]).applied == 3
    assert store.read("u1", 10) == [("a", 1000), ("b", 2000)]
    assert store.append([Event("u1", "c", 3000)]).applied == 1
    assert store.read("u1", 2) == [("b", 2000), ("c", 3000)]
    assert store.read("nobody", 10) == []


def test_item_ids_with_colons_and_user_ids_with_braces(store_url):
    store = RedisHistoryStore(store_url)
    store.append([Event("{evil}", "urn:item:7", 1), Event("(evil)", "other", 2), Event("%7Bevil%7D", "third", 3)])
    assert store.read("{evil}", 5) == [("urn:item:7", 1)]
    assert store.read("(evil)", 5) == [("other", 2)]  # distinct ids never share a key
    assert store.read("%7Bevil%7D", 5) == [("third", 3)]
    assert history_key("{evil}").count("{") == 1
    assert history_key("u1") == "seqrec:hist:{u1}"  # plain ids keep the documented layout


def test_cap_trims_oldest(store_url):
    store = RedisHistoryStore(store_url, cap=3)
    store.append([Event("u", str(i), i) for i in range(5)])
    assert [i for i, _ in store.read("u", 10)] == ["2", "3", "4"]


def test_merge_keeps_ingested_events_and_is_idempotent(store_url):
    store = RedisHistoryStore(store_url)
    store.append([Event("u1", "late", 5000)])
    rows = [("u1", ["a", "b"], [1000, 2000]), ("u2", ["x"], [10])]
    assert store.merge_bulk(iter(rows), batch=1) == 2
    store.merge_bulk(iter(rows))  # publishing the same bundle twice changes nothing
    assert store.read("u1", 10) == [("a", 1000), ("b", 2000), ("late", 5000)]
    assert store.read("u2", 10) == [("x", 10)]


def _same_slot_pair() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(100_000):
        user = f"user{i}"
        if (slot := history_slot(user)) in seen:
            return seen[slot], user
        seen[slot] = user
    raise AssertionError("no two users share a slot")


def test_many_users_across_slots_and_nodes(store_url):
    """One batch spanning many slots (and, on the cluster, every node), and two users of one slot."""
    store = RedisHistoryStore(store_url, cap=4)
    a, b = _same_slot_pair()
    users = [f"u{i}" for i in range(60)] + [a, b]
    assert store.append([Event(u, f"i{t}", t) for u in users for t in (3, 1, 2)]).applied == 3 * len(users)
    rows = [(u, ["i0", "i1", "i9"], [0, 1, 9]) for u in users]
    assert store.merge_bulk(iter(rows), batch=25) == len(users)
    for user in users:
        assert store.read(user, 10) == [("i1", 1), ("i2", 2), ("i3", 3), ("i9", 9)]  # cap 4 keeps the newest
    assert store.read_many(users + ["nobody"], 2, chunk=7) == [[("i3", 3), ("i9", 9)]] * len(users) + [[]]


def test_merge_rereads_when_a_user_changes_concurrently(store_url, monkeypatch):
    """An ingestion between the merge's read and its write is not lost: the WATCH makes it read again."""
    store, other = RedisHistoryStore(store_url), RedisHistoryStore(store_url)
    calls = []

    def merge_with_interleaved_ingest(existing, items, stamps):
        if not calls:
            other.append([Event("u1", "concurrent", 1500)])
        calls.append(1)
        return merge_entries(existing, items, stamps)

    monkeypatch.setattr(history_store, "merge_entries", merge_with_interleaved_ingest)
    assert store.merge_bulk(iter([("u1", ["a", "b"], [1000, 2000])])) == 1
    assert len(calls) == 2
    assert store.read("u1", 10) == [("a", 1000), ("concurrent", 1500), ("b", 2000)]


def test_one_transaction_over_several_users_fails_on_a_cluster(cluster_url):
    """Why batches are split by slot: the users of one append/merge batch land in different slots, and
    a MULTI over them is refused by the cluster client and by the cluster itself."""
    users = ["u1", "u2"]
    assert history_slot("u1") != history_slot("u2")
    store = RedisHistoryStore(cluster_url)
    with store.client.pipeline(transaction=True) as pipe:  # what append/merge_bulk did before
        for user in users:
            pipe.rpush(history_key(user), "1:x")
        with pytest.raises(redis.exceptions.CrossSlotTransactionError):
            pipe.execute()
    # Raw MULTI/EXEC on one node, over two of its users in different slots: the server says CROSSSLOT.
    node = store.client.get_node_from_key(history_key("u1"))
    other = next(f"v{i}" for i in range(10_000)
                 if store.client.get_node_from_key(history_key(f"v{i}")).name == node.name
                 and history_slot(f"v{i}") != history_slot("u1"))
    with redis.Redis(host=node.host, port=node.port) as client, client.pipeline(transaction=True) as pipe:
        pipe.rpush(history_key("u1"), "1:x")
        pipe.rpush(history_key(other), "1:x")
        with pytest.raises(redis.ResponseError, match="same slot"):  # CROSSSLOT
            pipe.execute()
    assert store.read("u1", 5) == [] and store.read(other, 5) == []


def test_cluster_password_from_the_url(cluster_url, redis_cluster):
    nodes = [redis.Redis(host="127.0.0.1", port=node.port) for node in redis_cluster.nodes]
    for node in nodes:
        node.config_set("requirepass", "s3cret")
    try:
        with_password = cluster_url.replace("redis+cluster://", "redis+cluster://:s3cret@")
        store = RedisHistoryStore(with_password)
        assert store.append([Event("u1", "a", 1), Event("u2", "b", 2)]).applied == 2
        assert store.merge_bulk(iter([("u1", ["z"], [0])])) == 1
        assert store.read("u1", 5) == [("z", 0), ("a", 1)]
        without = RedisHistoryStore(cluster_url, timeout=0.5)
        assert without.ping() is False
        with pytest.raises(HistoryStoreUnavailable, match="Redis is unavailable"):
            without.read("u1", 5)
    finally:
        for node in nodes:
            node.execute_command("AUTH", "s3cret")
            node.config_set("requirepass", "")
            node.close()


def test_merge_entries_is_a_multiset_union():
    merged = merge_entries([b"1:a", b"3:c"], ["a", "a", "b"], [1, 1, 2])
    assert merged == ["1:a", "1:a", "2:b", "3:c"]


@pytest.mark.parametrize("scheme", ["redis://{}/0", "redis+cluster://{}"])
def test_unreachable_redis_raises_unavailable(scheme):
    store = RedisHistoryStore(scheme.format(f"127.0.0.1:{free_port()}"), timeout=0.5)  # does not connect yet
    assert store.ping() is False
    with pytest.raises(HistoryStoreUnavailable, match="Redis is unavailable"):
        store.read("u", 5)
    with pytest.raises(HistoryStoreUnavailable):
        store.append([Event("u", "i", 1)])
    with pytest.raises(HistoryStoreUnavailable):
        store.merge_bulk(iter([("u", ["i"], [1])]))
    with pytest.raises(HistoryStoreUnavailable):
        store.read_many(["u", "v"], 5)


def test_cluster_url_parsing():
    first, nodes = parse_cluster_url("rediss+cluster://app:s%40cret@a.example:7000,b.example,[::1]:7002/0"
                                     "?ssl_cert_reqs=none")
    assert nodes == [("a.example", 7000), ("b.example", 6379), ("::1", 7002)]
    assert first == "rediss://app:s%40cret@a.example:7000?ssl_cert_reqs=none"
    assert redact_url("rediss+cluster://app:s%40cret@a:1,b:2/0") == "rediss+cluster://***@a:1,b:2/0"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379",
    "127.0.0.1:6379",
    "redis+cluster://",
    "redis+cluster://a:1,,b:2",
    "redis+cluster://a:notaport",
    "redis+cluster://a:70000",
    "redis+cluster://a:1/3",
    "redis+cluster://a:1?db=2",
    "redis://127.0.0.1:notaport/0",
])
def test_malformed_url_is_a_value_error_naming_redis_url(url):
    with pytest.raises(ValueError, match="REDIS_URL"):
        RedisHistoryStore(url)


def test_malformed_url_message_hides_the_password():
    with pytest.raises(ValueError) as err:
        RedisHistoryStore("redis+cluster://:hunter2@a:1/5")
    assert "hunter2" not in str(err.value)
