"""The durable event log: every applied event, beyond the per-user cap of the histories.

Events are appended by the ingestion script (`event_ingest.APPEND_SCRIPT`) to a Redis stream in the
same hash slot as the user's history, so log and history change in one atomic step: one stream on a
single endpoint, one stream per hash slot on a Redis Cluster (the key's hash tag is a short string
chosen to fall in that slot). With AOF (`appendfsync always` or `everysec`, see docs/threat_model.md)
the log survives restarts. `seqrec events export` reads it back for the next training; `seqrec events
trim` drops what has been trained on.
"""

from __future__ import annotations

import csv
import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

LOG_PREFIX = "seqrec:log:"
SINGLE_LOG = f"{LOG_PREFIX}{{all}}"
EXPORT_COLUMNS = ("user_id", "item_id", "timestamp_ms", "event_id", "logged_ms", "recommendation_id", "event_type")


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each hash slot, a short tag whose key `seqrec:log:{tag}` falls in it (found once, by search)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        tag = format(n, "x")
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot], missing = tag, missing - 1
        n += 1
    return tuple(t for t in tags if t is not None)


def log_key(history_key: str, cluster: bool) -> str:
    """The stream that logs the events of the user whose history is `history_key`."""
    if not cluster:
        return SINGLE_LOG
    return f"{LOG_PREFIX}{{{_slot_tags()[key_slot(history_key.encode())]}}}"


@dataclass(frozen=True)
class LoggedEvent:
    user_id: str
    item_id: str
    timestamp_ms: int
    event_id: str
    logged_ms: int  # when Redis applied it (the stream entry id's time)
    recommendation_id: str = ""  # the served list it is attributed to, if the client said
    event_type: str = ""


def _log_keys(client: redis.Redis | RedisCluster) -> list[str]:
    keys = client.scan_iter(match=f"{LOG_PREFIX}*", count=1000)
    return sorted({k.decode() if isinstance(k, bytes) else k for k in keys})


def _decode(entry_id: bytes | str, fields: dict[Any, Any]) -> LoggedEvent:
    def text(name: str) -> str:
        value = fields.get(name.encode(), fields.get(name, ""))  # r and k are absent from older entries
        return value.decode() if isinstance(value, bytes) else value

    stream_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return LoggedEvent(text("u"), text("i"), int(text("t")), text("e"), int(stream_id.partition("-")[0]),
                       text("r"), text("k"))


def read_log(client: redis.Redis | RedisCluster, since_ms: int = 0, until_ms: int | None = None,
             page: int = 10_000) -> Iterator[LoggedEvent]:
    """Every logged event applied in [since_ms, until_ms), stream by stream (each in the order applied)."""
    for key in _log_keys(client):
        start = f"{since_ms}-0"
        end = "+" if until_ms is None else f"({until_ms}-0"
        while True:
            entries = client.xrange(key, min=start, max=end, count=page)
            for entry_id, fields in entries:
                yield _decode(entry_id, fields)
            if len(entries) < page:
                break
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)


def _by_event_time(client: redis.Redis | RedisCluster, since_ms: int, until_ms: int | None) -> list[LoggedEvent]:
    """The logged events applied in [since_ms, until_ms), in event-time order (ties: the order applied)."""
    return sorted(read_log(client, since_ms, until_ms), key=lambda e: (e.timestamp_ms, e.logged_ms))


def export_csv(client: redis.Redis | RedisCluster, out: Path, since_ms: int = 0,
               until_ms: int | None = None) -> int:
    """Write the logged events to a CSV file (EXPORT_COLUMNS, by event time); returns how many."""
    events = _by_event_time(client, since_ms, until_ms)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(EXPORT_COLUMNS)
        for e in events:
            writer.writerow([e.user_id, e.item_id, e.timestamp_ms, e.event_id, e.logged_ms, e.recommendation_id,
                             e.event_type])
    tmp.replace(out)
    return len(events)


def trim_log(client: redis.Redis | RedisCluster, before_ms: int) -> int:
    """Drop the events applied before `before_ms` (e.g. those a published bundle was trained on)."""
    return sum(int(client.xtrim(key, minid=f"{before_ms}-0", approximate=False)) for key in _log_keys(client))


def extend_csv(client: redis.Redis | RedisCluster, original: Path, out: Path, columns: tuple[str, str, str],
               time_unit: str, since_ms: int = 0, until_ms: int | None = None) -> int:
    """`original`'s rows, then the logged events in its (user, item, time) columns and time unit (s or ms),
    other columns left empty: one file to train on. Returns the number of events added."""
    if out.resolve() == original.resolve():
        raise ValueError("--out must differ from --append-to (the original stays as it is)")
    with open(original, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{original}: no header row")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{original}: no column(s) {missing} (see --user-col, --item-col, --time-col)")
    at = [header.index(c) for c in columns]
    events = _by_event_time(client, since_ms, until_ms)
    tmp = out.with_name(out.name + ".partial")
    with open(original, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
        if src.tell() and not _ends_with_newline(original):
            dst.write(b"\n")
    with open(tmp, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for e in events:
            row = [""] * len(header)
            when = str(e.timestamp_ms) if time_unit == "ms" else f"{e.timestamp_ms / 1000:.3f}"
            row[at[0]], row[at[1]], row[at[2]] = e.user_id, e.item_id, when
            writer.writerow(row)
    tmp.replace(out)
    return len(events)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"
