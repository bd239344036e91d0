"""User histories in Redis: one list per user of `"<timestamp_ms>:<item_id>"`, oldest first.

Keys carry a hash tag (`seqrec:hist:{user}`), so a Redis Cluster keeps each user's list on one slot.
Writes are MULTI/EXEC transactions: an ingestion is acknowledged only after Redis applied it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis
from tqdm.auto import tqdm

KEY_PREFIX = "seqrec:hist:"
DEFAULT_CAP = 1000  # entries kept per user; older ones are trimmed


class HistoryStoreUnavailable(RuntimeError):
    """Redis cannot be reached or refused the operation."""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    timestamp_ms: int


def history_key(user_id: str) -> str:
    # Braces in a user id would change the cluster hash tag; they are replaced, ids stay readable.
    safe = user_id.replace("{", "(").replace("}", ")")
    return f"{KEY_PREFIX}{{{safe}}}"


def _entry(timestamp_ms: int, item_id: str) -> str:
    return f"{timestamp_ms}:{item_id}"


def _parse(entry: bytes | str) -> tuple[str, int]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    ts, _, item = text.partition(":")
    return item, int(ts)


class RedisHistoryStore:
    def __init__(self, url: str, cap: int = DEFAULT_CAP, timeout: float = 2.0):
        self.cap = cap
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=10)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise HistoryStoreUnavailable(f"Redis is unavailable: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def read(self, user_id: str, limit: int) -> list[tuple[str, int]]:
        """The user's most recent `limit` (item_id, timestamp_ms), oldest first; [] for an unknown user."""
        if limit <= 0:
            return []
        entries = self._call(self.client.lrange, history_key(user_id), -limit, -1)
        return [_parse(e) for e in entries]

    def append(self, events: Iterable[Event]) -> int:
        """Append events (each user's in timestamp order, stable) in one transaction; returns the count."""
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        if not by_user:
            return 0

        def write(pipe: redis.client.Pipeline) -> None:
            for user, user_events in by_user.items():
                key = history_key(user)
                ordered = sorted(user_events, key=lambda e: e.timestamp_ms)
                pipe.rpush(key, *[_entry(e.timestamp_ms, e.item_id) for e in ordered])
                pipe.ltrim(key, -self.cap, -1)

        pipe = self.client.pipeline(transaction=True)
        write(pipe)
        self._call(pipe.execute)
        return sum(len(v) for v in by_user.values())

    def merge_bulk(self, histories: Iterator[tuple[str, list[str], list[int]]], total: int | None = None,
                   batch: int = 500, progress: bool = False) -> int:
        """Merge training-time histories into the stored ones, idempotently and without losing events.

        For each user the stored entries and the bundle's are united (exact duplicates once), stably
        ordered by timestamp, and written back under WATCH, so a concurrent ingestion is never lost.
        """
        users = 0
        bar = tqdm(total=total, desc="histories → redis", unit="user", disable=not progress)
        chunk: list[tuple[str, list[str], list[int]]] = []
        for row in histories:
            chunk.append(row)
            if len(chunk) == batch:
                users += self._merge_chunk(chunk)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            users += self._merge_chunk(chunk)
            bar.update(len(chunk))
        bar.close()
        return users

    def _merge_chunk(self, chunk: list[tuple[str, list[str], list[int]]]) -> int:
        keys = [history_key(user) for user, _, _ in chunk]
        while True:
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.watch(*keys)
                    stored = [pipe.lrange(k, 0, -1) for k in keys]
                    pipe.multi()
                    for key, existing, (_, items, stamps) in zip(keys, stored, chunk, strict=True):
                        merged = merge_entries(existing, items, stamps)[-self.cap:]
                        pipe.delete(key)
                        if merged:
                            pipe.rpush(key, *merged)
                    pipe.execute()
                    return len(chunk)
            except redis.WatchError:
                continue  # a concurrent write touched one of these users: read again
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                raise HistoryStoreUnavailable(f"Redis is unavailable: {exc}") from exc


def merge_entries(existing: list[bytes], items: list[str], stamps: list[int]) -> list[str]:
    """Multiset union of stored and incoming entries, stably ordered by timestamp (stored first on ties)."""
    current = [e.decode() if isinstance(e, bytes) else e for e in existing]
    unmatched = Counter(current)
    added = []
    for entry in (_entry(ts, item) for item, ts in zip(items, stamps, strict=True)):
        if unmatched[entry] > 0:
            unmatched[entry] -= 1
        else:
            added.append(entry)
    return sorted(current + added, key=lambda e: int(e.partition(":")[0]))
