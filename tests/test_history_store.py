"""User histories in a real Redis: ordering, acknowledgement, merge on publish, outages."""

import pytest

from seqrec.services.ranker.history_store import (
    Event,
    HistoryStoreUnavailable,
    RedisHistoryStore,
    history_key,
    merge_entries,
)
from seqrec.shared.local_services import free_port


def test_append_and_read_in_timestamp_order(redis_url):
    store = RedisHistoryStore(redis_url)
    assert store.append([Event("u1", "b", 2000), Event("u1", "a", 1000), Event("u2", "x", 5)]) == 3
    assert store.read("u1", 10) == [("a", 1000), ("b", 2000)]
    assert store.append([Event("u1", "c", 3000)]) == 1
    assert store.read("u1", 2) == [("b", 2000), ("c", 3000)]
    assert store.read("nobody", 10) == []


def test_item_ids_with_colons_and_user_ids_with_braces(redis_url):
    store = RedisHistoryStore(redis_url)
    store.append([Event("{evil}", "urn:item:7", 1)])
    assert store.read("{evil}", 5) == [("urn:item:7", 1)]
    assert history_key("{evil}").count("{") == 1


def test_cap_trims_oldest(redis_url):
    store = RedisHistoryStore(redis_url, cap=3)
    store.append([Event("u", str(i), i) for i in range(5)])
    assert [i for i, _ in store.read("u", 10)] == ["2", "3", "4"]


def test_merge_keeps_ingested_events_and_is_idempotent(redis_url):
    store = RedisHistoryStore(redis_url)
    store.append([Event("u1", "late", 5000)])
    rows = [("u1", ["a", "b"], [1000, 2000]), ("u2", ["x"], [10])]
    assert store.merge_bulk(iter(rows), batch=1) == 2
    store.merge_bulk(iter(rows))  # publishing the same bundle twice changes nothing
    assert store.read("u1", 10) == [("a", 1000), ("b", 2000), ("late", 5000)]
    assert store.read("u2", 10) == [("x", 10)]


def test_merge_entries_is_a_multiset_union():
    merged = merge_entries([b"1:a", b"3:c"], ["a", "a", "b"], [1, 1, 2])
    assert merged == ["1:a", "1:a", "2:b", "3:c"]


def test_unreachable_redis_raises_unavailable():
    store = RedisHistoryStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    assert store.ping() is False
    with pytest.raises(HistoryStoreUnavailable, match="Redis is unavailable"):
        store.read("u", 5)
    with pytest.raises(HistoryStoreUnavailable):
        store.append([Event("u", "i", 1)])

