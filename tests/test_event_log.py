"""Exactly-once, time-ordered ingestion and the durable event log, in a real Redis and a real Redis Cluster."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from seqrec.services.ranker.event_log import SINGLE_LOG, export_csv, extend_csv, log_key, read_log, trim_log
from seqrec.services.ranker.history_store import (
    Event,
    HistoryStoreUnavailable,
    Ingested,
    RedisHistoryStore,
    history_key,
)
from seqrec.shared.local_services import free_port


def test_a_repeated_event_id_is_acknowledged_once(store_url):
    store = RedisHistoryStore(store_url)
    batch = [Event("u1", "a", 1000, "e1"), Event("u1", "b", 2000, "e2"), Event("u2", "x", 5, "e1")]
    assert store.append(batch) == Ingested(applied=3, duplicates=0)  # ids are per user: u2's e1 is its own
    assert store.append(batch) == Ingested(applied=0, duplicates=3)  # a retry of the whole call
    assert store.append([Event("u1", "c", 3000, "e3"), Event("u1", "c", 3000, "e3")]) == Ingested(1, 1)
    assert store.read("u1", 10) == [("a", 1000), ("b", 2000), ("c", 3000)]
    assert store.read("u2", 10) == [("x", 5)]


def test_events_without_an_id_are_each_applied(store_url):
    """Without ids two identical events are two views: the store gives each its own id."""
    store = RedisHistoryStore(store_url)
    assert store.append([Event("u", "a", 1), Event("u", "a", 1)]) == Ingested(2, 0)
    assert store.read("u", 10) == [("a", 1), ("a", 1)]


def test_late_events_are_inserted_in_timestamp_order(store_url):
    """Whatever order calls arrive in, the history is in timestamp order; ties keep arrival order."""
    store = RedisHistoryStore(store_url)
    store.append([Event("u", f"i{t}", t, f"e{t}") for t in range(0, 200, 2)])  # 0, 2, ..., 198
    store.append([Event("u", "late3", 3, "x3"), Event("u", "late197", 197, "x197"), Event("u", "tie", 100, "t")])
    store.append([Event("u", "first", -0, "x0")])  # at the very start, behind the tie of i0
    entries = store.read("u", 1000)
    stamps = [t for _, t in entries]
    assert stamps == sorted(stamps) and len(entries) == 104
    assert [i for i, t in entries if t in (0, 3, 100, 197)] == ["i0", "first", "late3", "i100", "tie", "late197"]


def test_the_cap_trims_the_oldest_even_for_a_late_event(store_url):
    store = RedisHistoryStore(store_url, cap=3)
    store.append([Event("u", str(t), t, str(t)) for t in (10, 20, 30)])
    store.append([Event("u", "old", 5, "old"), Event("u", "mid", 25, "mid")])
    assert store.read("u", 10) == [("20", 20), ("mid", 25), ("30", 30)]


def test_the_event_log_keeps_every_applied_event_beyond_the_cap(store_url, tmp_path):
    store = RedisHistoryStore(store_url, cap=2)
    store.append([Event(f"user{n % 7}", f"i{n}", 1000 + n, f"e{n}") for n in range(50)])
    store.append([Event("user0", "i0", 1000, "e0")])  # a duplicate is not logged again
    logged = store.call(lambda client: list(read_log(client)))
    assert sorted((e.user_id, e.item_id, e.timestamp_ms, e.event_id) for e in logged) == sorted(
        (f"user{n % 7}", f"i{n}", 1000 + n, f"e{n}") for n in range(50))
    assert all(len(store.read(f"user{u}", 100)) == 2 for u in range(7))  # the histories are capped

    out = tmp_path / "events.csv"
    assert store.call(lambda client: export_csv(client, out)) == 50
    rows = list(csv.DictReader(out.open()))
    assert [int(r["timestamp_ms"]) for r in rows] == list(range(1000, 1050))  # by event time
    assert set(rows[0]) == {"user_id", "item_id", "timestamp_ms", "event_id", "logged_ms", "recommendation_id",
                            "event_type"}

    cut = max(e.logged_ms for e in logged) + 1
    assert store.call(lambda client: trim_log(client, cut)) == 50
    assert store.call(lambda client: list(read_log(client))) == []


def test_log_keys_share_the_slot_of_the_history():
    """On a cluster the script's three keys must hash to one slot."""
    from redis.crc import key_slot

    for user in ("u1", "{evil}", "user_123456", "ü"):
        assert key_slot(log_key(history_key(user), cluster=True).encode()) == key_slot(history_key(user).encode())
    assert log_key(history_key("u1"), cluster=False) == SINGLE_LOG


def test_extend_a_training_file_with_the_logged_events(redis_url, tmp_path):
    store = RedisHistoryStore(redis_url)
    store.append([Event("new_user", "s1e1", 1_767_225_600_500, "e1"), Event("u0", "s2e2", 1_767_225_601_000, "e2")])
    original = tmp_path / "train.csv"
    original.write_text("user,item,ts,genre\nu0,s1e1,1767225500,drama")  # no final newline
    out = tmp_path / "train_plus_events.csv"
    assert store.call(lambda c: extend_csv(c, original, out, ("user", "item", "ts"), "s")) == 2
    assert out.read_text().splitlines() == ["user,item,ts,genre", "u0,s1e1,1767225500,drama",
                                            "new_user,s1e1,1767225600.500,", "u0,s2e2,1767225601.000,"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['when'\]"):
        store.call(lambda c: extend_csv(c, original, out, ("user", "item", "when"), "s"))


def test_seqrec_events_cli(redis_url, tmp_path):
    RedisHistoryStore(redis_url).append([Event("u", "i", 5, "e")])
    out = tmp_path / "log.csv"
    run = [sys.executable, "-m", "seqrec.services.cli", "events", "--redis-url", redis_url]
    done = subprocess.run([*run, "export", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"exported": 1, "out": str(out)}
    down = f"redis://127.0.0.1:{free_port()}/0"
    failed = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "events", "--redis-url", down, "export",
                             "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "Redis is unavailable" in failed.stderr and "Traceback" not in failed.stderr


def test_a_failed_cluster_batch_is_completed_by_a_retry_without_doubles(cluster_url, redis_cluster):
    """A batch over many slots stops when a master stops answering (SIGSTOP); the same call again, once it
    answers, applies only what was missing and doubles nothing."""
    from seqrec.services.ranker.history_store import history_slot
    from seqrec.shared.local_services import CLUSTER_SLOTS

    users = [f"user{n}" for n in range(60)]
    batch = [Event(u, f"i{t}", t, f"{u}-{t}") for u in users for t in (1, 2)]
    masters = len(redis_cluster.nodes)
    first_owner = history_slot(users[0]) * masters // CLUSTER_SLOTS  # slots are split evenly, in node order
    stopped = redis_cluster.nodes[(first_owner + 1) % masters].process  # users[0] is written before the failure
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        with pytest.raises(HistoryStoreUnavailable, match="retry with the same event ids"):
            RedisHistoryStore(cluster_url, timeout=0.3).append(batch)
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    store = RedisHistoryStore(cluster_url)
    deadline = time.monotonic() + 60
    while True:  # what a client does: retry UNAVAILABLE with the same ids until the cluster is back
        try:
            done = store.append(batch)
            break
        except HistoryStoreUnavailable:
            assert time.monotonic() < deadline, "the cluster never came back"
            time.sleep(0.5)
    assert done.applied + done.duplicates == len(batch) and 0 < done.duplicates < len(batch), done
    assert all(store.read(user, 10) == [("i1", 1), ("i2", 2)] for user in users)
    assert store.append(batch) == Ingested(0, len(batch))


def test_redis_settings_that_weaken_durability_are_named(store_url, tmp_path):
    """Checked at ranker start (a warning each): no AOF, AOF without fsync per write, an eviction policy."""
    import redis

    from seqrec.shared.local_services import start_redis

    store = RedisHistoryStore(store_url)
    assert store.durability_warnings() == []  # the test deployments run as the shipped ones do
    first = store_url.split("//")[1].split(",")[0].split("/")[0]
    host, port = first.rsplit(":", 1)
    node = redis.Redis(host=host, port=int(port))
    node.config_set("appendfsync", "everysec")
    node.config_set("maxmemory-policy", "allkeys-lru")
    try:
        warnings = store.durability_warnings()
    finally:
        node.config_set("appendfsync", "always")
        node.config_set("maxmemory-policy", "noeviction")
        node.close()
    assert [w.split(" is ")[0] for w in warnings] == ["appendfsync", "maxmemory-policy"], warnings
    plain = start_redis(tmp_path / "plain", appendonly=False)
    try:
        assert RedisHistoryStore(f"redis://{plain.address}/0").durability_warnings()[0].startswith("appendonly is off")
    finally:
        plain.stop()
