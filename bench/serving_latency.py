"""Serving latency of the ranker over gRPC on loopback, on Milvus Lite and a Milvus server side by side.

    python bench/serving_latency.py --out docs/serving_latency.md

Each --setup `ITEMS:TYPES:CLIENTS:INDEXES` (default: 10k items user_to_item at 1 and 8 clients,
FLAT; 100k items, the four query types at 1, 8 and 32 clients, FLAT and HNSW; 1M items
user_to_item at 1 and 8 clients, HNSW) runs once per --engines entry (`lite` = `milvus-lite
server`, `server` = `milvus-server` 2.3.5) and index: a synthetic bundle written by the trainer's
own builder (bench/synthetic_bundle.py, untrained, cached under --scratch), a fresh redis-server
and Milvus, `seqrec publish` with that index, and the ranker as its own process (`python -m
seqrec.services.cli serve ranker`, SEQREC_ORT_THREADS=1). Measured:

- the floor: encoder forward on a 49-item history (this process, 1 thread), one Milvus search,
  one Redis read, a no-work gRPC round trip, and the ranker's servicer called in this process;
- recall@k of the served index against exact search (numpy) on the same intents;
- per query type and concurrency: a closed loop of N client threads (one channel each) for a
  fixed time: throughput, p50/p99 latency, errors, CPU cores used by each process group.

Writes the Markdown report to --out, and the plot (.png) and raw results (.json) beside it.
Every child process is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_latency_report import breakdown, json_safe, machine, markdown, plot, ratios

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.attribution import DEFAULT_TTL_S as DEFAULT_RECOMMENDATION_TTL_S
from seqrec.services.ranker.attribution import ServedLists
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.history_store import RedisHistoryStore
from seqrec.services.ranker.metrics import RankerMetrics
from seqrec.services.ranker.publish import I2I_SUFFIX, bundle_item_to_item_vectors, publish
from seqrec.services.ranker.recommender import Recommender
from seqrec.services.ranker.service import RankerServicer
from seqrec.services.ranker.vector_store import INDEX_TYPES, MilvusItemStore
from seqrec.shared.bundle import HISTORIES, MANIFEST, Bundle, BundleError
from seqrec.shared.local_services import (
    ManagedProcess,
    free_port,
    start_milvus_lite,
    start_milvus_server,
    start_redis,
)

SERVICE = "seqrec.proto.v1.RankerService"
QUERY_TYPES = ("user_to_item", "contextual", "sequential", "item_to_item")
METHODS = {"user_to_item": "UserToItem", "contextual": "Contextual", "sequential": "Sequential",
           "item_to_item": "ItemToItem"}
HISTORY_LEN = 49  # max_len - 1: the longest history the encoder reads
CALL_TIMEOUT_S = 30.0
RECALL_QUERIES = 200
ENGINES = {"lite": ("milvus-lite", start_milvus_lite), "server": ("milvus-server", start_milvus_server)}
DEFAULT_SETUPS = ("10000:user_to_item:1,8:FLAT", "100000:all:1,8,32:FLAT,HNSW", "1000000:user_to_item:1,8:HNSW")
Stats = dict[str, float]


@dataclass(frozen=True)
class Setup:
    """One catalog size: the query types, client counts and indexes measured on it."""

    items: int
    types: tuple[str, ...]
    concurrency: tuple[int, ...]
    indexes: tuple[str, ...]


def parse_setup(text: str) -> Setup:
    """`ITEMS:TYPES:CLIENTS:INDEXES`, e.g. `100000:all:1,8,32:FLAT,HNSW` or `10000:user_to_item:1,8:FLAT`."""
    try:
        items, types, clients, indexes = text.split(":")
        setup = Setup(int(items), QUERY_TYPES if types == "all" else tuple(types.split(",")),
                      tuple(sorted({int(c) for c in clients.split(",")})), tuple(indexes.upper().split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ITEMS:TYPES:CLIENTS:INDEXES, got {text!r}") from exc
    if setup.items < 2 or min(setup.concurrency) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: ITEMS must be >= 2 and CLIENTS >= 1")
    for name, allowed in ((setup.types, QUERY_TYPES), (setup.indexes, INDEX_TYPES)):
        if not set(name) <= set(allowed):
            raise argparse.ArgumentTypeError(f"{text!r}: {sorted(set(name) - set(allowed))} not in {allowed}")
    return setup


# ---- measuring -------------------------------------------------------------------------------

def summarize(seconds: Sequence[float]) -> Stats:
    """n, p50, p99, mean and max in milliseconds."""
    if not len(seconds):
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"),
                "max_ms": float("nan")}
    ms = np.asarray(seconds) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {"n": len(ms), "p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max())}


def time_calls(fn: Callable[[int], object], seconds: float, min_reps: int = 20, max_reps: int = 50_000) -> Stats:
    """Call fn(0), fn(1), ... one at a time for `seconds` (at least `min_reps` calls, at most 4x as long)
    after a short warm-up, and summarize."""
    warm_until = time.perf_counter() + seconds / 4
    for i in range(10):
        fn(i)
        if time.perf_counter() > warm_until:
            break
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(max_reps):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if (elapsed > seconds and len(samples) >= min_reps) or elapsed > 4 * seconds:
            break
    return summarize(samples)


def process_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in a process group (all threads) from /proc.

    The servers are started in their own sessions, so the group holds a server and its children
    (milvus-server's launcher and the milvus binary it runs)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def settle(pids: Sequence[int], max_wait: float = 120.0, idle_cores: float = 0.15) -> float:
    """Wait until the servers are idle (work left over from timed-out calls is done); returns seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        before = sum(process_cpu_s(pid) for pid in pids)
        time.sleep(0.5)
        if (sum(process_cpu_s(pid) for pid in pids) - before) / 0.5 < idle_cores:
            break
    return time.perf_counter() - start


# ---- processes -------------------------------------------------------------------------------

def start_ranker(bundle: Path, redis_url: str, milvus_uri: str, run_dir: Path, extra_env: dict[str, str],
                 timeout: float = 180.0) -> ManagedProcess:
    """`seqrec serve ranker` as a child process; returns once its health check says SERVING."""
    port = free_port()
    env = {**os.environ, "SEQREC_BUNDLE": str(bundle), "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{port}",
           "REDIS_URL": redis_url, "MILVUS_URI": milvus_uri, "SEQREC_ORT_THREADS": "1",
           "SEQREC_ORT_PROVIDER": "cpu", "SEQREC_SHUTDOWN_GRACE_S": "1", **extra_env}
    log_path = run_dir / "ranker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "ranker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ranker = ManagedProcess("ranker", proc, port, log_path)
    try:
        ranker.wait_ready(timeout)
        with grpc.insecure_channel(ranker.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"ranker never became SERVING:\n{ranker.log_tail()}")
                time.sleep(0.2)
    except BaseException:
        ranker.stop()
        raise
    return ranker


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind as KeyboardInterrupt, so every `finally` (child cleanup) runs,
    also when the shell started this process with SIGINT ignored (a background job)."""
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cached_bundle(scratch: Path, n_items: int, n_users: int, seed: int) -> tuple[Path, float]:
    """A verified synthetic bundle from the cache, or a new one; (path, seconds spent building)."""
    root = scratch / "bundles" / f"items{n_items}-users{n_users}-seed{seed}"
    for path in sorted(root.glob("*/" + MANIFEST)):
        if not path.parent.name.startswith("."):
            with contextlib.suppress(BundleError):
                return Bundle.open(path.parent).path, 0.0
    from synthetic_bundle import make_bundle  # bench/ is on sys.path when this file runs as a script

    t0 = time.perf_counter()
    path = make_bundle(root, n_items, n_users, seed=seed)
    return path, time.perf_counter() - t0


# ---- workload --------------------------------------------------------------------------------

def build_requests(bundle: Bundle, top_k: int, n: int, seed: int) -> tuple[dict[str, list[Any]], list[list[str]]]:
    """Requests per query type from real user ids and popularity-weighted real item ids; and the histories."""
    rng = np.random.default_rng(seed)
    rows = list(bundle.iter_jsonl(HISTORIES))
    users = [r["user_id"] for r in rows]
    ids = np.asarray(bundle.vocab().ids(), dtype=object)
    weights = bundle.popularity()[1:len(ids) + 1].astype(np.float64) + 1.0
    items = rng.choice(ids, size=n * 21, p=weights / weights.sum()).tolist()
    picked = [users[i] for i in rng.integers(0, len(users), size=n)]
    sizes = rng.integers(5, 21, size=n)
    requests = {
        "user_to_item": [ranker_pb2.UserToItemRequest(user_id=u, top_k=top_k) for u in picked],
        "contextual": [ranker_pb2.ContextualRequest(user_id=u, item_id=items[i], top_k=top_k)
                       for i, u in enumerate(picked)],
        "sequential": [ranker_pb2.SequentialRequest(session_items=items[n + 20 * i: n + 20 * i + int(s)], top_k=top_k)
                       for i, s in enumerate(sizes)],
        "item_to_item": [ranker_pb2.ItemToItemRequest(item_id=items[-1 - i], top_k=top_k) for i in range(n)],
    }
    return requests, [r["items"] for r in rows]


def _client(method: Callable[..., Any], requests: list[Any], start: int, until: float, stop: threading.Event,
            latencies: list[float], errors: Counter) -> None:
    i = start
    while not stop.is_set():
        t0 = time.perf_counter()
        if t0 >= until:
            return
        try:
            method(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)
            latencies.append(time.perf_counter() - t0)
        except grpc.RpcError as exc:
            errors[exc.code().name] += 1
        i += 1


def closed_loop(address: str, method_name: str, requests: list[Any], concurrency: int, seconds: float,
                warmup: float, pids: dict[str, int]) -> dict[str, Any]:
    """N threads, each with its own channel, send back-to-back requests for `seconds` (after `warmup`)."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per client thread
    channels = [grpc.insecure_channel(address, options=options) for _ in range(concurrency)]
    stop = threading.Event()
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        methods = [getattr(ranker_pb2_grpc.RankerServiceStub(c), method_name) for c in channels]

        def run(duration: float, latencies: list[list[float]], errors: list[Counter]) -> float:
            until = time.perf_counter() + duration
            offsets = np.linspace(0, len(requests), concurrency, endpoint=False).astype(int)
            threads = [threading.Thread(target=_client, daemon=True,
                                        args=(m, requests, int(o), until, stop, lat, err))
                       for m, o, lat, err in zip(methods, offsets, latencies, errors, strict=True)]
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return time.perf_counter() - t0

        if warmup > 0:
            run(warmup, [[] for _ in methods], [Counter() for _ in methods])
        latencies: list[list[float]] = [[] for _ in methods]
        errors: list[Counter] = [Counter() for _ in methods]
        cpu0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        client0 = time.process_time()
        elapsed = run(seconds, latencies, errors)
        cores = {name: (process_cpu_s(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
        cores["client"] = (time.process_time() - client0) / elapsed
    finally:
        stop.set()
        for channel in channels:
            channel.close()
    flat = [x for lat in latencies for x in lat]
    total_errors = sum(errors, Counter())
    return {"concurrency": concurrency, "seconds": elapsed, "ok": len(flat), "errors": sum(total_errors.values()),
            "error_codes": dict(total_errors), "rps": len(flat) / elapsed, **summarize(flat), "cpu_cores": cores}


# ---- the floor -------------------------------------------------------------------------------

def measure_floor(bundle: Bundle, requests: dict[str, list[Any]], histories: list[list[str]], address: str,
                  redis_url: str, milvus_uri: str, seconds: float, top_k: int) -> dict[str, Stats]:
    """Each part of a request alone, one call at a time, plus the ranker's servicer in this process."""
    vocab = bundle.vocab()
    encoded = sorted((vocab.encode(h)[0] for h in histories), key=len, reverse=True)
    long = [h[-HISTORY_LEN:] for h in encoded[:200]]  # the longest histories: 49 items when the bundle has them
    encoder = OnnxEncoder(bundle, intra_op_threads=1, provider="cpu")
    store = connected_store(milvus_uri)
    redis_store = RedisHistoryStore(redis_url)
    intents = encoder.intents(long)
    i2i = bundle_item_to_item_vectors(bundle, bundle.item_vectors())  # what publish loads
    seen = [sorted(set(h)) for h in long]
    users = [r.user_id for r in requests["user_to_item"]]
    version, k, q, n_items = bundle.version, top_k, len(long), vocab.n_items
    floor: dict[str, Stats] = {
        "encoder": time_calls(lambda i: encoder.intents([long[i % q]]), seconds),
        "search": time_calls(lambda i: store.search(version, intents[i % q: i % q + 1], k), seconds),
        "search_excluding_history": time_calls(
            lambda i: store.search(version, intents[i % q: i % q + 1], k, "", [seen[i % q]]), seconds),
        "search_i2i": time_calls(
            lambda i: store.search(version + I2I_SUFFIX, i2i[1 + i % n_items: 2 + i % n_items], k, "",
                                   [[1 + i % n_items]]), seconds),
        "redis_read": time_calls(lambda i: redis_store.read(users[i % len(users)], HISTORY_LEN), seconds),
    }
    with grpc.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        floor["grpc_model_info"] = time_calls(lambda i: stub.GetModelInfo(common_pb2.GetModelInfoRequest()), seconds)
        floor["grpc_health_check"] = time_calls(
            lambda i: health.Check(health_pb2.HealthCheckRequest(service=SERVICE)), seconds)
    floor["recall"] = {"n": q, f"recall@{k}": recall_at_k(bundle, store, intents, k)}
    recommender = Recommender(bundle, encoder, store, redis_store)
    metrics = RankerMetrics()
    servicer = RankerServicer(lambda: recommender, common_pb2.ModelInfo, metrics,
                              ServedLists(redis_store, DEFAULT_RECOMMENDATION_TTL_S, metrics))
    for kind, method in METHODS.items():
        handler, reqs = getattr(servicer, method), requests[kind]
        floor[f"in_process_{kind}"] = time_calls(lambda i, h=handler, r=reqs: h(r[i % len(r)], None), seconds)
    store.close()
    return floor


def recall_at_k(bundle: Bundle, store: MilvusItemStore, intents: np.ndarray, k: int, chunk: int = 20) -> float:
    """Mean share of the exact top-k (numpy inner products over every item) that the served search returns."""
    vectors = bundle.item_vectors()[1:bundle.vocab().n_items + 1]
    found = []
    for start in range(0, len(intents), chunk):
        block = intents[start:start + chunk]
        exact = np.argpartition(-(block @ vectors.T), k, axis=1)[:, :k] + 1  # item indices start at 1
        served = store.search(bundle.version, block, k)
        found += [len(set(e.tolist()) & {hit[0] for hit in hits}) / k for e, hits in zip(exact, served, strict=True)]
    return float(np.mean(found))


# ---- one catalog -----------------------------------------------------------------------------

def connected_store(milvus_uri: str, attempts: int = 5) -> MilvusItemStore:
    """The ranker's store class, once its connection answers.

    pymilvus shares one connection per URI and pings it every 10 s even when idle; milvus-lite
    answers an idle connection with GOAWAY too_many_pings, so the first call after an idle spell
    can fail once.
    """
    store = MilvusItemStore(milvus_uri)
    for _ in range(attempts):
        if store.ping():
            return store
        time.sleep(1.0)
    raise RuntimeError(f"Milvus at {milvus_uri} does not answer")


def ranker_log_summary(path: Path) -> dict[str, Any]:
    """Counts of the ranker's JSON log lines by level, refused requests by status code, GOAWAY notices."""
    levels: Counter = Counter()
    refused: Counter = Counter()
    goaway = 0
    for line in path.read_text(errors="replace").splitlines():
        goaway += "GOAWAY" in line or "too_many_pings" in line
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                levels[entry.get("level", "?")] += 1
                if entry.get("msg") == "request refused":
                    refused[str(entry.get("code"))] += 1
    return {"levels": dict(levels), "refused": dict(refused), "goaway_lines": goaway}


def run_setup(n_items: int, engine: str, index: str, types: Sequence[str], concurrency: Sequence[int],
              args: argparse.Namespace) -> dict[str, Any]:
    """Build/publish/serve one catalog on one engine and index; measure the floor and each (query type, clients)."""
    bundle_path, build_s = cached_bundle(args.scratch, n_items, args.users, args.seed)
    bundle = Bundle.open(bundle_path)
    engine_name, start_milvus = ENGINES[engine]
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.scratch))
    result: dict[str, Any] = {"items": n_items, "engine": engine_name, "index": index, "users": args.users,
                              "bundle": str(bundle_path), "bundle_build_s": build_s}
    with contextlib.ExitStack() as stack:
        if not args.keep_stores:
            stack.callback(shutil.rmtree, run_dir, True)
        redis = start_redis(run_dir / "redis", appendonly=False)
        stack.callback(redis.stop)
        t0 = time.perf_counter()
        milvus = start_milvus(run_dir / "milvus")
        stack.callback(milvus.stop)
        result["milvus_start_s"] = time.perf_counter() - t0
        redis_url, milvus_uri = f"redis://{redis.address}/0", f"http://{milvus.address}"
        t0 = time.perf_counter()
        publish(bundle_path, redis_url, milvus_uri, progress=False, index_type=index)
        result["publish_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranker = start_ranker(bundle_path, redis_url, milvus_uri, run_dir, dict(args.ranker_env))
        stack.callback(ranker.stop)
        result["ranker_start_s"] = time.perf_counter() - t0
        log(f"{n_items} items on {engine_name} {index}: bundle {build_s:.0f} s, {engine_name} up in "
            f"{result['milvus_start_s']:.0f} s, publish {result['publish_s']:.0f} s, "
            f"ranker up in {result['ranker_start_s']:.1f} s")
        pids = {"ranker": ranker.process.pid, "milvus": milvus.process.pid, "redis": redis.process.pid}
        requests, histories = build_requests(bundle, args.top_k, 2000, args.seed)
        settle(list(pids.values()))
        result["floor"] = measure_floor(bundle, requests, histories, ranker.address, redis_url, milvus_uri,
                                        args.floor_seconds, args.top_k)
        result["recall"] = result["floor"].pop("recall")
        log("floor p50 ms: " + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in result["floor"].items())
            + f"; recall {result['recall']}")
        result["memory_mib"] = {name: group_rss_mib(pid) for name, pid in pids.items()}
        result["load"] = {}
        for kind in types:
            result["load"][kind] = []
            for clients in concurrency:
                waited = settle(list(pids.values()))
                level = closed_loop(ranker.address, METHODS[kind], requests[kind], clients, args.seconds,
                                    args.warmup, pids)
                level["settled_s"] = waited
                result["load"][kind].append(level)
                log(f"{kind} c={clients}: {level['rps']:.1f} req/s, p50 {level['p50_ms']:.2f} ms, "
                    f"p99 {level['p99_ms']:.2f} ms, errors {level['errors']} (waited {waited:.1f} s for idle)")
                if ranker.process.poll() is not None:
                    raise RuntimeError(f"the ranker exited with {ranker.process.returncode}:\n{ranker.log_tail()}")
        result["ranker_log"] = ranker_log_summary(ranker.log_path)
    return result


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


# ---- command line ----------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", type=parse_setup, action="append", dest="setups", metavar="ITEMS:TYPES:CLIENTS:INDEXES",
                   help=f"a catalog to measure (repeatable; default {' '.join(DEFAULT_SETUPS)})")
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                   help="Milvus engines, each measured on every setup")
    p.add_argument("--seconds", type=float, default=10.0, help="measured duration of each level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up before each level")
    p.add_argument("--floor-seconds", type=float, default=3.0, help="duration of each floor measurement")
    p.add_argument("--users", type=int, default=10_000, help="users with histories in the synthetic bundle")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranker-env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the ranker (e.g. SEQREC_GRPC_WORKERS=4)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "seqrec-bench" / "serving",
                   help="bundle cache and per-run store directories")
    p.add_argument("--keep-stores", action="store_true", help="keep the redis/milvus data and ranker log")
    p.add_argument("--out", type=Path, default=Path("docs/serving_latency.md"))
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the report and plot from the JSON beside --out")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error("--seconds must be > 0")
    args.setups = args.setups or [parse_setup(text) for text in DEFAULT_SETUPS]
    return args


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """The Markdown report at `out`, the raw JSON and the plot beside it."""
    for result in report["results"]:
        result["ratios"], result["breakdown"] = ratios(result), breakdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report))
    out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
    if report["results"]:
        plot(report, out.with_suffix(".png"))
    log(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.json')}")


def _nan_for_null(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: float("nan") if v is None and k.endswith("_ms") else v for k, v in entry.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        write_outputs(json.loads(args.out.with_suffix(".json").read_text(), object_hook=_nan_for_null), args.out)
        return 0
    args.scratch.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": shlex.join(["python", "bench/serving_latency.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(), "seconds": args.seconds, "warmup": args.warmup, "floor_seconds": args.floor_seconds,
        "top_k": args.top_k, "users": args.users, "engines": [ENGINES[e][0] for e in args.engines],
        "ranker_env": dict(args.ranker_env), "results": []}
    t0 = time.perf_counter()
    report["failed"] = []
    try:
        with interruptible():
            for setup in args.setups:
                for index in setup.indexes:
                    for engine in args.engines:
                        try:
                            report["results"].append(run_setup(setup.items, engine, index, setup.types,
                                                               setup.concurrency, args))
                        except Exception as exc:  # noqa: BLE001 - reported in the page; the other runs go on
                            log(f"{setup.items} items on {ENGINES[engine][0]} {index} failed: {exc}")
                            report["failed"].append({"items": setup.items, "engine": ENGINES[engine][0],
                                                     "index": index, "error": f"{type(exc).__name__}: {exc}"})
                        # what is done so far is on disk, so a later failure or a kill loses only its own run
                        report["wall_s"] = time.perf_counter() - t0
                        report["load_average_end"] = list(os.getloadavg())
                        write_outputs(report, args.out)
    except KeyboardInterrupt:
        log("interrupted: child processes stopped; the runs finished before are written")
        return 130
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
