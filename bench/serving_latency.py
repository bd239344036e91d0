"""Serving latency of the ranker over gRPC on loopback, against the floor of its own parts.

    python bench/serving_latency.py --items 10000 100000 --concurrency 1 8 32 --seconds 20 \
        --out docs/serving_latency.md

Per catalog size: a synthetic bundle (bench/synthetic_bundle.py, cached under --scratch), a fresh
redis-server and `milvus-lite server`, `seqrec publish` with a FLAT index, and the ranker as its own
process (`python -m seqrec.services.cli serve ranker`, SEQREC_ORT_THREADS=1). Measured:

- the floor: encoder forward on a 49-item history (this process, 1 thread), one Milvus search,
  one Redis read, a no-work gRPC round trip, and the ranker's servicer called in this process;
- per query type and concurrency: a closed loop of N client threads (one channel each) for a
  fixed time: throughput, p50/p99 latency, errors, CPU cores used by each process.

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
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException
from serving_latency_report import breakdown, json_safe, machine, markdown, plot, ratios

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.history_store import RedisHistoryStore
from seqrec.services.ranker.publish import I2I_SUFFIX, bundle_item_to_item_vectors, publish
from seqrec.services.ranker.recommender import Recommender
from seqrec.services.ranker.service import RankerServicer
from seqrec.services.ranker.vector_store import MilvusItemStore, collection_name
from seqrec.shared.bundle import HISTORIES, MANIFEST, Bundle, BundleError
from seqrec.shared.local_services import ManagedProcess, free_port, start_milvus_lite, start_redis

SERVICE = "seqrec.proto.v1.RankerService"
QUERY_TYPES = ("user_to_item", "contextual", "sequential", "item_to_item")
METHODS = {"user_to_item": "UserToItem", "contextual": "Contextual", "sequential": "Sequential",
           "item_to_item": "ItemToItem"}
HISTORY_LEN = 49  # max_len - 1: the longest history the encoder reads
CALL_TIMEOUT_S = 30.0
Stats = dict[str, float]


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


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads) from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    recommender = Recommender(bundle, encoder, store, redis_store)
    servicer = RankerServicer(lambda: recommender, common_pb2.ModelInfo)
    for kind, method in METHODS.items():
        handler, reqs = getattr(servicer, method), requests[kind]
        floor[f"in_process_{kind}"] = time_calls(lambda i, h=handler, r=reqs: h(r[i % len(r)], None), seconds)
    store.close()
    return floor


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


def flush(milvus_uri: str, version: str, attempts: int = 5) -> None:
    """Seal the version's two collections (publish leaves their rows in growing segments)."""
    for attempt in range(attempts):
        try:
            client = MilvusClient(uri=milvus_uri)
            for name in (version, version + I2I_SUFFIX):
                client.flush(collection_name(name))
            client.close()
            return
        except MilvusException:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


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


def search_now(bundle: Bundle, milvus_uri: str, seconds: float, top_k: int) -> Stats:
    """The `search` floor again (top-k, one query at a time), e.g. after the load or after a flush."""
    store = connected_store(milvus_uri)
    vectors = bundle.item_vectors()[1:201]  # any fixed queries: FLAT cost does not depend on them
    try:
        return time_calls(lambda i: store.search(bundle.version, vectors[i % 200: i % 200 + 1], top_k), seconds)
    finally:
        store.close()


def run_catalog(n_items: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build/publish/serve one catalog size, measure the floor and every (query type, concurrency)."""
    bundle_path, build_s = cached_bundle(args.scratch, n_items, args.users, args.seed)
    bundle = Bundle.open(bundle_path)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.scratch))
    result: dict[str, Any] = {"items": n_items, "users": args.users, "bundle": str(bundle_path),
                              "bundle_build_s": build_s, "flushed_after_publish": args.flush_after_publish}
    with contextlib.ExitStack() as stack:
        if not args.keep_stores:
            stack.callback(shutil.rmtree, run_dir, True)
        redis = start_redis(run_dir / "redis", appendonly=False)
        stack.callback(redis.stop)
        milvus = start_milvus_lite(run_dir / "milvus")
        stack.callback(milvus.stop)
        redis_url, milvus_uri = f"redis://{redis.address}/0", f"http://{milvus.address}"
        t0 = time.perf_counter()
        publish(bundle_path, redis_url, milvus_uri, progress=False, index_type="FLAT")
        if args.flush_after_publish:
            flush(milvus_uri, bundle.version)
        result["publish_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranker = start_ranker(bundle_path, redis_url, milvus_uri, run_dir, dict(args.ranker_env))
        stack.callback(ranker.stop)
        result["ranker_start_s"] = time.perf_counter() - t0
        log(f"{n_items} items: bundle {build_s:.0f} s, publish {result['publish_s']:.0f} s, "
            f"ranker up in {result['ranker_start_s']:.1f} s")
        servers = [ranker.process.pid, milvus.process.pid, redis.process.pid]
        requests, histories = build_requests(bundle, args.top_k, 2000, args.seed)
        settle(servers)
        result["floor"] = measure_floor(bundle, requests, histories, ranker.address, redis_url, milvus_uri,
                                        args.floor_seconds, args.top_k)
        log("floor p50 ms: " + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in result["floor"].items()))
        pids = {"ranker": ranker.process.pid, "milvus": milvus.process.pid, "redis": redis.process.pid}
        result["load"] = {}
        for kind in args.types:
            result["load"][kind] = []
            for concurrency in args.concurrency:
                waited = settle(servers)
                level = closed_loop(ranker.address, METHODS[kind], requests[kind], concurrency, args.seconds,
                                    args.warmup, pids)
                level["settled_s"] = waited
                result["load"][kind].append(level)
                log(f"{kind} c={concurrency}: {level['rps']:.1f} req/s, p50 {level['p50_ms']:.2f} ms, "
                    f"p99 {level['p99_ms']:.2f} ms, errors {level['errors']} (waited {waited:.1f} s for idle)")
                if ranker.process.poll() is not None:
                    raise RuntimeError(f"the ranker exited with {ranker.process.returncode}:\n{ranker.log_tail()}")
        settle(servers)
        result["search_after_load"] = search_now(bundle, milvus_uri, args.floor_seconds, args.top_k)
        flush(milvus_uri, bundle.version)
        result["search_after_flush"] = search_now(bundle, milvus_uri, args.floor_seconds, args.top_k)
        log(f"search p50 after the load {result['search_after_load']['p50_ms']:.2f} ms, "
            f"after flush {result['search_after_flush']['p50_ms']:.2f} ms")
        result["ranker_log"] = ranker_log_summary(ranker.log_path)
    return result


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
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000], help="catalog sizes")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client threads per level")
    p.add_argument("--seconds", type=float, default=20.0, help="measured duration of each level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up before each level")
    p.add_argument("--floor-seconds", type=float, default=5.0, help="duration of each floor measurement")
    p.add_argument("--types", nargs="+", choices=QUERY_TYPES, default=list(QUERY_TYPES))
    p.add_argument("--users", type=int, default=10_000, help="users with histories in the synthetic bundle")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranker-env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the ranker (e.g. SEQREC_GRPC_WORKERS=4)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "seqrec-bench" / "serving",
                   help="bundle cache and per-run store directories")
    p.add_argument("--flush-after-publish", action="store_true",
                   help="flush the Milvus collections after publish (publish itself does not)")
    p.add_argument("--keep-stores", action="store_true", help="keep the redis/milvus data and ranker log")
    p.add_argument("--out", type=Path, default=Path("docs/serving_latency.md"))
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the report and plot from the JSON beside --out")
    args = p.parse_args(argv)
    if min(args.concurrency) < 1 or min(args.items) < 2 or args.seconds <= 0:
        p.error("--concurrency must be >= 1, --items >= 2 and --seconds > 0")
    args.concurrency = sorted(set(args.concurrency))
    return args


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """The Markdown report at `out`, the raw JSON and the plot beside it."""
    for result in report["results"]:
        result["ratios"], result["breakdown"] = ratios(result), breakdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report))
    out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
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
        "top_k": args.top_k, "users": args.users, "concurrency": args.concurrency, "types": args.types,
        "ranker_env": dict(args.ranker_env), "results": []}
    try:
        with interruptible():
            for n_items in args.items:
                report["results"].append(run_catalog(n_items, args))
    except KeyboardInterrupt:
        log("interrupted: child processes stopped, nothing written")
        return 130
    report["load_average_end"] = list(os.getloadavg())
    write_outputs(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
