"""User histories in Redis: one list per user of `"<timestamp_ms>:<item_id>"`, oldest first.

`REDIS_URL` picks the deployment, and the same code serves both:

- `redis://[[user]:password@]host:port/db`, `rediss://` (TLS), `unix://`: one Redis endpoint (a
  server, a Sentinel-managed master service, a cluster proxy), through `redis.Redis`;
- `redis+cluster://[[user]:password@]host:port[,host:port...]`, `rediss+cluster://` (TLS): a Redis
  Cluster, through `redis.cluster.RedisCluster`; the hosts are startup nodes (the client discovers
  the others), only database 0 exists, query options (`ssl_cert_reqs`, ...) apply to every node.

Each user's history is one key, `seqrec:hist:{<user>}`; the hash tag puts its slot on the user id
alone. Events are written by one Lua script per user (services/ranker/event_ingest.py), atomic in Redis:
in timestamp order, at most once per event id, and logged to the durable event log
(services/ranker/event_log.py) in the same step. On one endpoint a call's scripts run in one
MULTI/EXEC, so a batch is all or nothing; on a cluster each user's write is atomic but a batch is not,
and a retry with the same event ids completes it without applying anything twice.

Beside the histories, one set per bundle version, `seqrec:changed:{<version>}`, holds the keys of the
items UpsertItems changed: the rankers read unchanged bundle items from the bundle in memory and
only changed ones from Milvus.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import ClusterError, CrossSlotTransactionError, InvalidPipelineStack, RedisClusterException
from redis.retry import Retry
from tqdm.auto import tqdm

from seqrec.services.ranker.event_ingest import (
    APPEND_SCRIPT,
    DEFAULT_ID_RETENTION_S,
    KEY_PREFIX,
    Event,
    Ingested,
    event_ids_key,
    history_key,
    script_args,
)
from seqrec.services.ranker.event_log import log_key
from seqrec.services.ranker.redis_deadlines import connection_class_for

__all__ = ["KEY_PREFIX", "Event", "HistoryStoreUnavailable", "Ingested", "RedisHistoryStore", "history_key"]

CHANGED_PREFIX = "seqrec:changed:"
DEFAULT_CAP = 1000  # entries kept per user; older ones are trimmed
WATCH_ATTEMPTS = 5  # read-merge-write attempts of one merge transaction after lost connections
SERVER_SCHEMES = ("redis", "rediss", "unix")
DURABILITY_SETTINGS = ("appendonly", "appendfsync", "maxmemory-policy")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # -> scheme of each node

# Errors that mean "Redis cannot serve this now"; a cross-slot transaction is a bug and stays one.
_BUGS = (CrossSlotTransactionError, InvalidPipelineStack)
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, ClusterError, RedisClusterException)

T = TypeVar("T")


class HistoryStoreUnavailable(RuntimeError):
    """Redis cannot be reached or refused the operation."""


def changed_items_key(version: str) -> str:
    """`seqrec:changed:{<version>}`: the set of item keys of a bundle version changed online (one slot)."""
    return f"{CHANGED_PREFIX}{{{version}}}"


def history_slot(user_id: str) -> int:
    """The Redis Cluster hash slot of the user's history."""
    return key_slot(history_key(user_id).encode())


def _entry(timestamp_ms: int, item_id: str) -> str:
    return f"{timestamp_ms}:{item_id}"


def _parse(entry: bytes | str) -> tuple[str, int]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    ts, _, item = text.partition(":")
    return item, int(ts)


def redact_url(url: str) -> str:
    """The URL with its credentials replaced by `***` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0] or [len(rest)])
    netloc = rest[:end]
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{rest[end:]}"


def _host_port(part: str) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"node {part!r} has no host")
    if not port:
        return host, 6379
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"node {part!r} has an invalid port")
    return host, int(port)


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """`redis+cluster://[cred@]h1:p1,h2:p2[/0][?opts]` -> (a `redis://` URL of the first node with the
    credentials and options, every startup node as (host, port)). Raises ValueError when malformed."""
    scheme, _, rest = url.partition("://")
    node_scheme = CLUSTER_SCHEMES[scheme.lower()]
    rest = rest.partition("#")[0]
    end = min([i for i in (rest.find(c) for c in "/?") if i >= 0] or [len(rest)])
    netloc, tail = rest[:end], rest[end:]
    path, _, query = tail.partition("?")
    if path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise ValueError("no cluster node (expected host:port[,host:port...])")
    nodes = [_host_port(part.strip()) for part in hosts.split(",")]
    host, port = nodes[0]
    host = f"[{host}]" if ":" in host else host
    first = f"{node_scheme}://{userinfo}{at}{host}:{port}" + (f"?{query}" if query else "")
    options = parse_url(first)  # validates the query options
    if options.get("db", 0) != 0:
        raise ValueError("a Redis Cluster has only database 0")
    return first, nodes


class RedisHistoryStore:
    def __init__(self, url: str, cap: int = DEFAULT_CAP, timeout: float = 2.0,
                 id_retention_s: float = DEFAULT_ID_RETENTION_S):
        self.cap = cap
        self.id_retention_ms = int(id_retention_s * 1000)
        self.url = redact_url(url)
        self._lock = threading.Lock()
        self._client: redis.Redis | RedisCluster | None = None
        self._watch_client: RedisCluster | None = None
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        # every read is also cut at the caller's deadline (services/ranker/redis_deadlines.py)
        options = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                       connection_class=connection_class_for(CLUSTER_SCHEMES.get(scheme, scheme)))
        try:
            if scheme in CLUSTER_SCHEMES:
                first, nodes = parse_cluster_url(url)
                self.cluster = True
                # Connecting discovers the cluster, so it is deferred to the first call: a ranker starts
                # (NOT_SERVING) while the cluster is down, as it does with one endpoint.
                self._connect: Callable[..., RedisCluster] = lambda **kw: RedisCluster(
                    url=first, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]], **options, **kw)
            elif scheme in SERVER_SCHEMES:
                self.cluster = False
                self._client = redis.Redis.from_url(url, health_check_interval=10, **options)  # connects lazily
            else:
                raise ValueError(f"unknown scheme {scheme + '://' if scheme else '(none)'}; expected redis://, "
                                 "rediss://, unix://, redis+cluster:// or rediss+cluster://")
        except ValueError as exc:
            raise ValueError(f"REDIS_URL {self.url!r} is malformed: {exc}") from exc

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The redis-py client; on a cluster, created (and the topology discovered) on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    @property
    def watch_client(self) -> redis.Redis | RedisCluster:
        """The client for WATCH transactions. On a cluster, one whose pipelines never retry by themselves:
        redis-py's cluster pipeline would resend on a new connection that no longer watches the keys
        (its standalone pipeline raises WatchError instead); `_merge_group` starts over itself."""
        if not self.cluster:
            return self.client
        if self._watch_client is None:
            with self._lock:
                if self._watch_client is None:
                    self._watch_client = self._connect(retry=Retry(NoBackoff(), 0))
        return self._watch_client

    def _call(self, fn: Callable[[redis.Redis | RedisCluster], T], watch: bool = False) -> T:
        try:
            return fn(self.watch_client if watch else self.client)
        except _BUGS:
            raise
        except _UNAVAILABLE as exc:
            raise HistoryStoreUnavailable(f"Redis is unavailable ({self.url}): {exc}") from exc

    def call(self, fn: Callable[[redis.Redis | RedisCluster], T]) -> T:
        """`fn(client)`, with Redis outages raised as HistoryStoreUnavailable (for tools beside the store)."""
        return self._call(fn)

    def _slot_groups(self, keys: list[str]) -> list[list[int]]:
        """Indices of `keys`, one group per transaction: all of them on one endpoint, one group per
        hash slot on a cluster (a transaction there may only touch one slot)."""
        if not self.cluster:
            return [list(range(len(keys)))]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            groups[key_slot(key.encode())].append(i)
        return list(groups.values())

    def ping(self) -> bool:
        """True when Redis answers (on a cluster: every node)."""
        try:
            return bool(self.client.ping())
        except (redis.RedisError, RedisClusterException):
            return False

    def durability_warnings(self) -> list[str]:
        """What in the Redis configuration weakens the promise that an acknowledged event is kept (every node
        of a cluster is asked); [] when it holds or when CONFIG GET is not allowed (a managed Redis)."""
        def settings(client: redis.Redis | RedisCluster) -> list[dict[str, str]]:
            nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
            out = []
            for node in nodes:
                kwargs = {"target_nodes": node} if node is not None else {}
                out.append({k: client.config_get(k, **kwargs).get(k, "") for k in DURABILITY_SETTINGS})
            return out

        try:
            found = self._call(settings)
        except (HistoryStoreUnavailable, redis.RedisError):
            return []
        warnings = set()
        for conf in found:
            if conf.get("appendonly") != "yes":
                warnings.add("appendonly is off: acknowledged events since the last snapshot are lost when Redis "
                             "restarts (run it with --appendonly yes --appendfsync always)")
            elif conf.get("appendfsync") != "always":
                warnings.add(f"appendfsync is {conf.get('appendfsync')!r}: up to a second of acknowledged events can "
                             "be lost when the Redis host crashes (always makes every acknowledgement durable)")
            policy = conf.get("maxmemory-policy", "noeviction")
            if policy != "noeviction":
                warnings.add(f"maxmemory-policy is {policy!r}: under memory pressure Redis may evict histories, "
                             "event ids (then a retry doubles an event) or the event log; use noeviction")
        return sorted(warnings)

    def read(self, user_id: str, limit: int) -> list[tuple[str, int]]:
        """The user's most recent `limit` (item_id, timestamp_ms), oldest first; [] for an unknown user."""
        if limit <= 0:
            return []
        entries = self._call(lambda client: client.lrange(history_key(user_id), -limit, -1))
        return [_parse(e) for e in entries]

    def read_many(self, user_ids: Sequence[str], limit: int, chunk: int = 1000) -> list[list[tuple[str, int]]]:
        """`read` for many users, pipelined without a transaction (on a cluster, redis-py sends one
        pipeline per node), `chunk` users per round."""
        if limit <= 0:
            return [[] for _ in user_ids]

        def lrange_all(client: redis.Redis | RedisCluster, users: Sequence[str]) -> list:
            with client.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.lrange(history_key(user), -limit, -1)
                return pipe.execute()

        out: list[list[tuple[str, int]]] = []
        for start in range(0, len(user_ids), chunk):
            rows = self._call(lambda client, s=start: lrange_all(client, user_ids[s:s + chunk]))
            out.extend([_parse(e) for e in entries] for entries in rows)
        return out

    def mark_changed_items(self, version: str, item_keys: Sequence[int]) -> None:
        """Record that these items of bundle `version` were changed online (UpsertItems), for every replica."""
        if item_keys:
            self._call(lambda client: client.sadd(changed_items_key(version), *map(int, item_keys)))

    def changed_items(self, version: str, item_keys: Sequence[int]) -> set[int]:
        """The given items of bundle `version` that were changed online since it was published."""
        if not item_keys:
            return set()
        keys = [int(k) for k in item_keys]
        found = self._call(lambda client: client.smismember(changed_items_key(version), keys))
        return {k for k, hit in zip(keys, found, strict=True) if hit}

    def append(self, events: Iterable[Event]) -> Ingested:
        """Apply events once Redis has them: each user's in timestamp order, once per event id.

        Events without an id get one here, so redis-py's own resend of a call cannot apply it twice.
        One transaction on one endpoint; on a cluster one per hash slot, so when Redis fails midway
        the users written before the failure keep their events (the error says how many) and a
        retry with the same ids applies only the rest.
        """
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            if not event.event_id:
                event = dataclasses.replace(event, event_id=f"seqrec-{uuid.uuid4().hex}")
            by_user[event.user_id].append(event)
        if not by_user:
            return Ingested()
        users = list(by_user)
        keys = [history_key(user) for user in users]
        now_ms = int(time.time() * 1000)

        def write(client: redis.Redis | RedisCluster, group: list[int]) -> Ingested:
            with client.pipeline(transaction=True) as pipe:
                for i in group:
                    keyset = [keys[i], event_ids_key(users[i]), log_key(keys[i], self.cluster)]
                    args = script_args(users[i], by_user[users[i]], self.cap, now_ms, self.id_retention_ms)
                    pipe.execute_command("EVAL", APPEND_SCRIPT, len(keyset), *keyset, *args)
                replies = pipe.execute()
            done = Ingested()
            for i, (applied, duplicates, *ids) in zip(group, replies, strict=True):
                by_id = {e.event_id: e for e in by_user[users[i]]}
                fresh = tuple(by_id[e.decode() if isinstance(e, bytes) else e] for e in ids)
                done += Ingested(int(applied), int(duplicates), fresh)
            return done

        done, written = Ingested(), 0
        for group in self._slot_groups(keys):
            try:
                done += self._call(lambda client, group=group: write(client, group))
            except HistoryStoreUnavailable as exc:
                if written:
                    raise HistoryStoreUnavailable(f"{exc} (the events of {written} of {len(users)} users were "
                                                  "written before the failure; retry with the same event ids)"
                                                  ) from exc.__cause__
                raise
            written += len(group)
        return done

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
        for group in self._slot_groups(keys):
            rows = [(keys[i], chunk[i]) for i in group]
            self._call(lambda client, rows=rows: self._merge_group(client, rows), watch=True)
        return len(chunk)

    def _merge_group(self, client: redis.Redis | RedisCluster,
                     rows: list[tuple[str, tuple[str, list[str], list[int]]]]) -> None:
        """Read, merge and write back the keys of one transaction, again while a watched key changes."""
        keys = [key for key, _ in rows]
        lost = 0
        while True:
            try:
                with client.pipeline(transaction=True) as pipe:
                    pipe.watch(*keys)
                    stored = [pipe.lrange(k, 0, -1) for k in keys]
                    pipe.multi()
                    for key, existing, (_, (_, items, stamps)) in zip(keys, stored, rows, strict=True):
                        merged = merge_entries(existing, items, stamps)[-self.cap:]
                        pipe.delete(key)
                        if merged:
                            pipe.rpush(key, *merged)
                    pipe.execute()
                    return
            except redis.WatchError:
                continue  # a concurrent write touched one of these users: read again
            except (redis.ConnectionError, redis.TimeoutError):
                # Cluster only (see watch_client): the connection, and its WATCH, is gone; read again.
                lost += 1
                if not self.cluster or lost >= WATCH_ATTEMPTS:
                    raise


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
