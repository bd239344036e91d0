"""Chaos benchmark: events sent through the real gateway while Redis, the ranker and the gateway are SIGKILLed.

Clients POST /v1/events with an `event_id` per event and retry every failed or unanswered call with the same
body until it is acknowledged, as the API tells them to. A killer thread SIGKILLs one component at random
(redis-server, or every Redis Cluster node in turn; the ranker; the gateway) and restarts it in place (Redis
with `appendfsync always`). At the end every acknowledged event must be in its user's history and in the
event log exactly once, and every history in timestamp order: the report counts events sent, acknowledged,
lost and duplicated (both must be 0).

    python bench/chaos.py --out docs/chaos.md                     # standalone Redis, then a 3-master cluster
    python bench/chaos.py --events 2000 --kills 2 --redis standalone --out /tmp/chaos.md   # a short run

Each user's timestamps are distinct and sent out of order in part (late events), so (user, timestamp) names
an event in the history; histories stay below the per-user cap.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_bundle import make_bundle  # noqa: E402

from seqrec.services.ranker.event_log import read_log  # noqa: E402
from seqrec.services.ranker.history_store import HistoryStoreUnavailable, RedisHistoryStore  # noqa: E402
from seqrec.services.ranker.publish import publish  # noqa: E402
from seqrec.shared.local_services import (  # noqa: E402
    ManagedProcess,
    free_port,
    respawn,
    start_milvus_lite,
    start_redis,
    start_redis_cluster,
    start_service,
)

BATCH = 20  # events per request
BASE_MS = 1_767_225_600_000


@dataclass
class Tally:
    sent: int = 0  # events in requests sent (a retry counts again)
    acknowledged: dict[str, tuple[str, int]] = field(default_factory=dict)  # event id -> (user, timestamp)
    requests: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)  # a client that stopped on an unexpected answer
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Stack:
    """The processes under test and how to restart each in place."""

    work: Path
    redis_mode: str
    bundle: Path
    redis: list[ManagedProcess] = field(default_factory=list)
    redis_url: str = ""
    milvus: ManagedProcess | None = None
    ranker: ManagedProcess | None = None
    gateway: ManagedProcess | None = None
    ranker_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)

    def start(self) -> None:
        if self.redis_mode == "cluster":
            cluster = start_redis_cluster(self.work / "redis")
            self.redis, self.redis_url = cluster.nodes, cluster.url
        else:
            node = start_redis(self.work / "redis")
            self.redis, self.redis_url = [node], f"redis://{node.address}/0"
        self.milvus = start_milvus_lite(self.work / "milvus")
        publish(self.bundle, self.redis_url, f"http://{self.milvus.address}", progress=False)
        self.start_ranker()
        self.start_gateway()

    def start_ranker(self) -> None:
        self.ranker = start_service("ranker", {"SEQREC_BUNDLE": str(self.bundle), "REDIS_URL": self.redis_url,
                                               "MILVUS_URI": f"http://{self.milvus.address}",
                                               "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{self.ranker_port}",
                                               "SEQREC_ORT_THREADS": "1", "SEQREC_LOG_FORMAT": "json"},
                                    self.ranker_port, self.work / "logs")

    def start_gateway(self) -> None:
        self.gateway = start_service("gateway", {"SEQREC_RANKER": f"127.0.0.1:{self.ranker_port}",
                                                 "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{self.gateway_port}",
                                                 "SEQREC_GATEWAY_GRPC_ADDRESS": "", "SEQREC_LOG_FORMAT": "json"},
                                     self.gateway_port, self.work / "logs")

    def restart_redis(self, n: int) -> None:
        """SIGKILL node n and start it again on its port and data directory (AOF replays what was fsynced)."""
        self.redis[n] = respawn(self.redis[n])

    def stop(self) -> None:
        for proc in (self.gateway, self.ranker, self.milvus, *self.redis):
            if proc is not None:
                proc.stop()


def _post(port: int, body: bytes, timeout: float = 5.0) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body, method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0  # no answer: connection refused or reset, or the call timed out


def client(stack: Stack, users: list[str], per_user: int, tally: Tally, rng: random.Random, target: int,
           killing_done: threading.Event) -> None:
    """Send the users' events in batches (some late), each batch retried until a 200; stop once the killer
    is done and this client has `target` events acknowledged (or its users have no events left)."""
    events = [{"user_id": u, "item_id": f"i{rng.randrange(1, 500):06d}", "timestamp_ms": BASE_MS + t * 1000,
               "event_id": uuid.uuid4().hex} for u in users for t in range(per_user)]
    # mostly in time order, a tenth of the events moved later (they arrive late)
    for _ in range(len(events) // 10):
        j = rng.randrange(len(events))
        events.append(events.pop(j))
    for start in range(0, len(events), BATCH):
        if killing_done.is_set() and start >= target:
            return
        batch = events[start:start + BATCH]
        body = json.dumps({"events": batch}).encode()
        attempt = 0
        while True:
            status = _post(stack.gateway_port, body)
            with tally.lock:
                tally.sent += len(batch)
                tally.requests += 1
                tally.retries += attempt > 0
            if status == 200:
                with tally.lock:
                    tally.acknowledged.update((e["event_id"], (e["user_id"], e["timestamp_ms"])) for e in batch)
                break
            if 400 <= status < 500 and status not in (408, 429):
                with tally.lock:
                    tally.errors.append(f"a valid batch was refused with {status}")
                return
            attempt += 1
            time.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0))


def killer(stack: Stack, kills: int, done: threading.Event, counts: Counter, rng: random.Random,
           pause: tuple[float, float]) -> None:
    """Until every component was killed `kills` times: one SIGKILL and restart at a time; then `done`."""
    targets = ["redis", "ranker", "gateway"]
    while min(counts[t] for t in targets) < kills:
        time.sleep(rng.uniform(*pause))
        target = rng.choice([t for t in targets if counts[t] < kills] or targets)
        if target == "redis":
            stack.restart_redis(counts[target] % len(stack.redis))
        elif target == "ranker":
            stack.ranker.kill()
            stack.start_ranker()
        else:
            stack.gateway.kill()
            stack.start_gateway()
        counts[target] += 1
    done.set()


def _when_redis_answers(read: Any, timeout: float = 120.0) -> Any:
    """`read()`, retried while a just-restarted Redis is still loading its AOF (or its cluster is settling)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except HistoryStoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def verify(stack: Stack, acknowledged: dict[str, tuple[str, int]], users: list[str]) -> dict[str, Any]:
    """Lost and duplicated events in the event log (by id) and the histories (by user and timestamp)."""
    store = RedisHistoryStore(stack.redis_url, timeout=10)
    logged = _when_redis_answers(lambda: store.call(lambda c: list(read_log(c))))
    by_id = Counter(e.event_id for e in logged)
    histories = _when_redis_answers(lambda: {u: store.read(u, store.cap) for u in users})
    stamps = Counter((u, t) for u, entries in histories.items() for _, t in entries)
    unordered = sum(1 for entries in histories.values() if [t for _, t in entries] != sorted(t for _, t in entries))
    return {
        "logged": len(logged),
        "lost_from_log": sum(1 for e in acknowledged if by_id[e] == 0),
        "duplicated_in_log": sum(n - 1 for n in by_id.values() if n > 1),
        "lost_from_histories": sum(1 for key in acknowledged.values() if stamps[key] == 0),
        "duplicated_in_histories": sum(n - 1 for n in stamps.values() if n > 1),
        "histories_out_of_order": unordered,
    }


def run(mode: str, args: argparse.Namespace, bundle: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"seqrec-chaos-{mode}-"))
    stack = Stack(work, mode, bundle)
    rng = random.Random(args.seed)
    per_user = min(args.per_user, 900)
    # room for ten times the target, sent only while the killer is still at work
    users = [f"chaos-{n:05d}" for n in range(max(args.clients, 10 * args.events // per_user))]
    tally, counts, done = Tally(), Counter(), threading.Event()
    started = time.perf_counter()
    try:
        stack.start()
        groups = [users[i::args.clients] for i in range(args.clients)]
        target = args.events // args.clients
        threads = [threading.Thread(target=client, args=(stack, g, per_user, tally, random.Random(args.seed + i),
                                                         target, done)) for i, g in enumerate(groups) if g]
        chaos = threading.Thread(target=killer, args=(stack, args.kills, done, counts, rng, (args.min_pause,
                                                                                              args.max_pause)))
        for t in threads:
            t.start()
        chaos.start()
        chaos.join()
        for t in threads:
            t.join()
        outcome = verify(stack, tally.acknowledged, users)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"redis": mode, "users": len(users), "per_user": per_user, "sent": tally.sent,
            "requests": tally.requests, "retried_requests": tally.retries, "acknowledged": len(tally.acknowledged),
            "client_errors": tally.errors,
            "kills": dict(counts), "seconds": round(time.perf_counter() - started, 1), **outcome}


def render(results: list[dict[str, Any]], command: str) -> str:
    rows = ["| Redis | acknowledged events | sent (with retries) | retried requests | kills redis / ranker / gateway | "
            "lost (log / histories) | duplicated (log / histories) | histories out of order | s |",
            "|---|--:|--:|--:|---|---|---|--:|--:|"]
    notes = []
    for r in results:
        k = r["kills"]
        rows.append(f"| {r['redis']} | {r['acknowledged']:,} | {r['sent']:,} | {r['retried_requests']:,} | "
                    f"{k.get('redis', 0)} / {k.get('ranker', 0)} / {k.get('gateway', 0)} | "
                    f"{r['lost_from_log']} / {r['lost_from_histories']} | {r['duplicated_in_log']} / "
                    f"{r['duplicated_in_histories']} | {r['histories_out_of_order']} | {r['seconds']:.0f} |")
        if r["acknowledged"] >= r["users"] * r.get("per_user", 0) > 0:
            notes.append(f"- {r['redis']}: the clients sent every event they had before the last kills, so those "
                         "kills met no traffic.")
    return "\n".join([
        "# Chaos: events while Redis, the ranker and the gateway are SIGKILLed", "",
        f"Generated by `bench/chaos.py`; rerun with `{command}`.", "",
        " ".join(__doc__.split("\n\n")[1].split()), "",
        "Redis runs with `appendonly yes` and `appendfsync always`; the cluster has 3 masters and no replicas "
        "(a restarted node comes back with its slots from its own files). Everything shares the machine's 2 CPUs. "
        "Lost means acknowledged but missing; duplicated means present more than once.", "",
        *rows, "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--per-user", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of each component")
    p.add_argument("--min-pause", type=float, default=1.0)
    p.add_argument("--max-pause", type=float, default=4.0)
    p.add_argument("--redis", nargs="+", choices=["standalone", "cluster"], default=["standalone", "cluster"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/chaos.md"))
    args = p.parse_args(argv)
    bundle_root = Path(tempfile.mkdtemp(prefix="seqrec-chaos-bundle-"))
    try:
        bundle = make_bundle(bundle_root, n_items=500, n_users=50)
        results = [run(mode, args, bundle) for mode in args.redis]
    finally:
        shutil.rmtree(bundle_root, ignore_errors=True)
    command = "python bench/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(render(results, command.strip()))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    bad = any(r["lost_from_log"] or r["lost_from_histories"] or r["duplicated_in_log"] or r["duplicated_in_histories"]
              or r["histories_out_of_order"] or r["client_errors"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
