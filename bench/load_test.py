"""Load test of the gateway's HTTP API: a bounded, closed-loop load at rising concurrency, on loopback.

    python bench/load_test.py --out docs/load_test.md                    # starts the stack (demo data)
    python bench/load_test.py --url http://127.0.0.1:8080 --bundle .seqrec/bundles --out docs/load_test.md

Without --url it starts the whole stack through `services.stack.start_stack` (as `seqrec up` and
tests/test_stack.py do: Redis, milvus-lite, embedder, ranker, trainer, gateway, each its own process on
loopback), trained for a few epochs on the demo data, and stops it at the end (also on Ctrl-C/SIGTERM).
With --url it drives a running gateway; --bundle (the bundle or bundle root it serves) supplies the ids.

Per level (1, 2, 4, 8, 16, 32 workers by default): N threads, each with its own keep-alive
`http.client` connection, send their next request as soon as the last one returns, for --warmup
seconds (not counted) and then --seconds (measured). The mix (default): 10% POST /v1/events, the rest
POST /v1/recommend split 40% user_to_item, 30% sequential, 20% item_to_item, 10% contextual, with ids
drawn from the bundle's histories and catalog, a share of them with `meta.*` filters. Events go to
synthetic `loadtest-user-*` users only, so served users' histories are left alone.

Reported per level: throughput (responses completed in the window / window), p50/p99/p999 latency,
errors by status (and by query type), CPU cores used by the client, every stack process and everything
else on the machine. The saturation point is the last level before throughput stops growing by more
than 10% while p99 rises. Every non-2xx answer or failed request is logged with its payload and the
response body (first 500 characters) to --error-log (the first 50 per level also go into the JSON).
Writes the Markdown report (--out), the plot (.png) and raw results (.json) beside it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MIX = {"user_to_item": 0.40, "sequential": 0.30, "item_to_item": 0.20, "contextual": 0.10}
EVENTS_SHARE = 0.10
FILTER_SHARE = 0.25
UNKNOWN_USER_SHARE = 0.05
LOADTEST_USERS = 200
REQUEST_TIMEOUT_S = 10.0
GROWTH = 1.10  # throughput must grow by more than 10% from one level to the next to count as growing
BODY_CHARS = 500
MAX_ERROR_RECORDS = 50  # per level, in the JSON (the error log has all of them)
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINDINGS = "## Findings (written by hand"  # kept as is when the report is regenerated


# ---- what to send ------------------------------------------------------------------------------

@dataclass
class Catalog:
    """Ids and filter values drawn from the served bundle."""

    users: list[str]
    histories: list[list[str]]
    items: list[str]  # weighted by occurrence in the histories (popular items come up more often)
    filters: list[dict[str, Any]]  # candidate `filters` objects
    bundle: str


def load_catalog(bundle_path: Path) -> Catalog:
    from seqrec.shared.bundle import HISTORIES, ITEMS, Bundle
    from seqrec.shared.registry import resolve_bundle

    bundle = Bundle.open(resolve_bundle(bundle_path), verify=False)
    users, histories = [], []
    for row in bundle.iter_jsonl(HISTORIES):
        if row["items"]:
            users.append(row["user_id"])
            histories.append(row["items"])
    if not users:
        raise SystemExit(f"{bundle_path}: the bundle has no user histories to draw ids from")
    items = [item for history in histories for item in history]
    schema = bundle.manifest.metadata_schema
    filters: list[dict[str, Any]] = []
    try:
        values: dict[str, set[Any]] = {col: set() for col, kind in schema.items() if kind == "string"}
        for row in bundle.iter_jsonl(ITEMS):
            for col in values:
                value = (row.get("meta") or {}).get(col)
                if isinstance(value, str) and len(value) <= 40:
                    values[col].add(value)
        for col, seen in values.items():
            if 1 < len(seen) <= 50:  # a categorical column, not free text
                filters += [{f"meta.{col}": v} for v in sorted(seen)]
    except (OSError, KeyError):
        pass  # no item table: bool filters only
    bools = [col for col, kind in schema.items() if kind == "bool"]
    filters += [{f"meta.{col}": True} for col in bools]
    if filters and bools:  # a combined filter, as a shop would send
        filters.append({**filters[0], f"meta.{bools[0]}": True})
    return Catalog(users, histories, items, filters, bundle.path.name)


def make_request(catalog: Catalog, rng: random.Random, worker: int) -> tuple[str, str, dict[str, Any]]:
    """(kind, path, JSON body) of one request drawn from the mix."""
    if rng.random() < EVENTS_SHARE:
        user = f"loadtest-user-{rng.randrange(LOADTEST_USERS)}"
        events = [{"user_id": user, "item_id": rng.choice(catalog.items)} for _ in range(rng.randint(1, 3))]
        return "events", "/v1/events", {"events": events}
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    body: dict[str, Any] = {"query_type": kind, "top_k": 10}
    row = rng.randrange(len(catalog.users))
    if kind in ("user_to_item", "contextual"):
        draw = rng.random()
        if draw < UNKNOWN_USER_SHARE:
            body["user_id"] = f"loadtest-unknown-{worker}-{rng.randrange(10**6)}"  # popularity fallback
        elif draw < 0.15:
            body["user_id"] = f"loadtest-user-{rng.randrange(LOADTEST_USERS)}"  # users the events feed
        else:
            body["user_id"] = catalog.users[row]
        if kind == "contextual":
            body["item_id"] = rng.choice(catalog.items)
        if rng.random() < 0.5:
            body["exclude_seen"] = True
    elif kind == "sequential":
        history = catalog.histories[row]
        length = rng.randint(1, min(5, len(history)))
        start = rng.randrange(len(history) - length + 1)
        body["session_items"] = history[start:start + length]
        if rng.random() < 0.5:
            body["exclude_seen"] = True
    else:
        body["item_id"] = rng.choice(catalog.items)
    if catalog.filters and rng.random() < FILTER_SHARE:
        body["filters"] = rng.choice(catalog.filters)
    return kind, "/v1/recommend", body


# ---- CPU accounting ----------------------------------------------------------------------------

def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def process_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return 0


def tree_ticks(pid: int) -> int:
    """CPU ticks of a process and its live descendants (the embedder, milvus-lite may fork)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += process_ticks(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            children = []
        stack += [int(c) for c in children]
    return total


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def other_processes(exclude: set[int], top: int = 5, sample_s: float = 1.0) -> list[dict[str, Any]]:
    """The busiest processes not part of this test, over `sample_s` seconds (what shares the CPUs)."""
    def snapshot() -> dict[int, int]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in exclude:
                out[int(entry.name)] = process_ticks(int(entry.name))
        return out

    before = snapshot()
    time.sleep(sample_s)
    after = snapshot()
    busy = sorted(((after[p] - before.get(p, after[p]), p) for p in after), reverse=True)[:top]
    rows = []
    for ticks, pid in busy:
        if ticks <= 0:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd:  # kernel threads have no command line
            rows.append({"pid": pid, "cores": round(ticks / CLK_TCK / sample_s, 2), "command": cmd[:120]})
    return rows


# ---- the load ----------------------------------------------------------------------------------

@dataclass
class Sample:
    kind: str
    start: float
    end: float
    status: int  # HTTP status; 0 = no response (connection error or timeout)


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    measure_from: float = 0.0
    measure_to: float = 0.0
    samples: list[Sample] = field(default_factory=list)  # every request, warm-up included
    errors: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


class ErrorLog:
    """Every failed request with its payload and response body, as JSON lines."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def worker_loop(host: str, port: int, catalog: Catalog, worker: int, seed: int, stop_at: float,
                out: list[Sample], errors: list[dict[str, Any]], error_log: ErrorLog, level: int,
                start_gate: threading.Barrier) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    start_gate.wait()
    try:
        while True:
            kind, path, body = make_request(catalog, rng, worker)
            data = json.dumps(body).encode()
            started = time.perf_counter()
            if started >= stop_at:
                break
            status, text, failure = 0, "", ""
            try:
                conn.request("POST", path, body=data, headers={"content-type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                if status >= 300:
                    text = raw[:BODY_CHARS].decode(errors="replace")
                if response.getheader("connection", "").lower() == "close":
                    conn.close()  # the server closed it: the next request opens a new connection
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                conn.close()
            ended = time.perf_counter()
            out.append(Sample(kind, started, ended, status))
            if status == 0 or status >= 300:
                record = {"level": level, "worker": worker, "kind": kind, "path": path, "status": status,
                          "latency_ms": round((ended - started) * 1e3, 2), "request": body,
                          "response": text or None, "failure": failure or None, "time": time.time()}
                errors.append(record)
                error_log.write(record)
    finally:
        conn.close()


def run_level(url: str, catalog: Catalog, concurrency: int, warmup: float, seconds: float, seed: int,
              error_log: ErrorLog, pids: dict[str, int]) -> LevelResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    t0 = time.perf_counter() + 0.2  # threads are started and connected before the clock runs
    measure_from, stop_at = t0 + warmup, t0 + warmup + seconds
    per_worker: list[list[Sample]] = [[] for _ in range(concurrency)]
    errors: list[dict[str, Any]] = []
    gate = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker_loop, args=(host, port, catalog, w, seed * 1000 + w, stop_at,
                                                          per_worker[w], errors, error_log, concurrency, gate),
                                daemon=True, name=f"load-{w}") for w in range(concurrency)]
    for thread in threads:
        thread.start()
    gate.wait()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    ticks = lambda name, pid: process_ticks(pid) if name == "client" else tree_ticks(pid)  # noqa: E731
    cpu_before = {name: ticks(name, pid) for name, pid in pids.items()}
    machine_before = machine_busy_ticks()
    wall_before = time.perf_counter()
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu_after = {name: ticks(name, pid) for name, pid in pids.items()}
    machine_after = machine_busy_ticks()
    wall = time.perf_counter() - wall_before
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 5)
    result = LevelResult(concurrency, seconds, measure_from, stop_at)
    result.samples = [s for samples in per_worker for s in samples]
    result.errors = sorted(errors, key=lambda e: e["time"])
    cores = {name: (cpu_after[name] - cpu_before[name]) / CLK_TCK / wall for name in pids}
    busy = (machine_after[0] - machine_before[0]) / CLK_TCK / wall
    cores["machine_busy"] = busy
    cores["other"] = max(0.0, busy - sum(v for k, v in cores.items() if k != "machine_busy"))
    result.cpu = {k: round(v, 2) for k, v in cores.items()}
    return result


def percentile_ms(latencies: np.ndarray, q: float) -> float:
    return float(np.percentile(latencies, q)) * 1e3 if len(latencies) else float("nan")


def summarize(level: LevelResult) -> dict[str, Any]:
    """Latencies of the requests sent in the measured window; throughput = responses completed in it."""
    samples = [s for s in level.samples if s.start >= level.measure_from]
    completed = sum(1 for s in level.samples if level.measure_from <= s.end <= level.measure_to)
    warmup_errors = sum(1 for s in level.samples if s.start < level.measure_from and not 200 <= s.status < 300)
    latencies = np.array([s.end - s.start for s in samples])
    ok = np.array([s.end - s.start for s in samples if 200 <= s.status < 300])
    by_status = Counter(str(s.status) for s in samples if not 200 <= s.status < 300)
    by_kind = Counter(s.kind for s in samples)
    kind_p99 = {k: round(percentile_ms(np.array([s.end - s.start for s in samples if s.kind == k]), 99), 2)
                for k in sorted(by_kind)}
    errors_by_kind = Counter(f"{s.kind}:{s.status}" for s in samples if not 200 <= s.status < 300)
    return {
        "concurrency": level.concurrency,
        "seconds": level.seconds,
        "requests": len(samples),
        "throughput_rps": round(completed / level.seconds, 2),
        "p50_ms": round(percentile_ms(latencies, 50), 2),
        "p99_ms": round(percentile_ms(latencies, 99), 2),
        "p999_ms": round(percentile_ms(latencies, 99.9), 2),
        "max_ms": round(float(latencies.max()) * 1e3, 2) if len(latencies) else float("nan"),
        "ok_p99_ms": round(percentile_ms(ok, 99), 2),
        "errors": int(sum(by_status.values())),
        "errors_by_status": dict(sorted(by_status.items())),
        "warmup_errors": warmup_errors,
        "errors_by_kind": dict(sorted(errors_by_kind.items())),
        "requests_by_kind": dict(sorted(by_kind.items())),
        "p99_ms_by_kind": kind_p99,
        "cpu_cores": level.cpu,
        "error_samples": level.errors[:MAX_ERROR_RECORDS],
    }


def saturation(levels: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first level after which throughput stops growing by more than 10% while p99 rises.

    "Stops growing" looks at every higher level, not only the next one: on a shared machine a flat step
    followed by more growth is noise (or CPU taken back from other work), not the service's limit.
    """
    for i, here in enumerate(levels[:-1]):
        later = levels[i + 1:]
        if max(lv["throughput_rps"] for lv in later) <= GROWTH * here["throughput_rps"] and \
                later[0]["p99_ms"] > here["p99_ms"]:
            return here
    return None


# ---- the report --------------------------------------------------------------------------------

def plot(levels: Sequence[dict[str, Any]], sat: dict[str, Any] | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv["concurrency"] for lv in levels]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [lv["throughput_rps"] for lv in levels], "o-", color="tab:blue", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("concurrent closed-loop workers")
    ax.set_ylabel("throughput (req/s)", color="tab:blue")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(x, [lv["p99_ms"] for lv in levels], "s--", color="tab:red", label="p99")
    right.plot(x, [lv["p50_ms"] for lv in levels], "^:", color="tab:orange", label="p50")
    right.set_yscale("log")
    right.set_ylabel("latency (ms, log)", color="tab:red")
    if sat is not None:
        ax.axvline(sat["concurrency"], color="gray", linestyle=":", label="saturation")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0"


def write_report(out: Path, result: dict[str, Any]) -> None:
    levels, sat, env = result["levels"], result["saturation"], result["environment"]
    lines = ["# Gateway load test", "", "Generated by `bench/load_test.py`; rerun with:", "",
             f"    {result['command']}", ""]
    note = env.get("note")
    lines += [f"- machine: {env['cpus']} CPUs (`nproc`), {env['cpu_model']}; Python {env['python']}; "
              f"{env['platform']}",
              f"- load average (1/5/15 min) at start {' / '.join(map(str, env['load_start']))}, at end "
              f"{' / '.join(map(str, env['load_end']))}"]
    if env.get("busy_others"):
        others = "; ".join(f"`{p['command'][:70]}` {p['cores']} cores" for p in env["busy_others"][:3])
        lines.append(f"- busiest other processes at start (1 s sample): {others}")
    if note:
        lines.append(f"- note: {note}")
    lines += [f"- target: {result['target']}; bundle `{result['bundle']}`"
              + (f" ({result['stack']})" if result.get("stack") else ""),
              f"- per level: {result['warmup_s']:g} s warm-up (not counted), then {result['seconds_per_level']:g} s "
              f"measured; closed loop: each worker thread has one keep-alive `http.client` connection and sends its "
              f"next request when the last one returns; request timeout {REQUEST_TIMEOUT_S:g} s",
              f"- mix: {EVENTS_SHARE:.0%} `POST /v1/events` (1-3 events for synthetic `loadtest-user-*` users), "
              "the rest `POST /v1/recommend`: " + ", ".join(f"{v:.0%} {k}" for k, v in MIX.items())
              + f"; top_k 10; {FILTER_SHARE:.0%} with `meta.*` filters, half of the history queries with "
              f"exclude_seen; {UNKNOWN_USER_SHARE:.0%} of user ids unknown (popularity fallback)",
              "- the load generator, the gateway, ranker, Redis, milvus-lite, embedder and trainer all run on this "
              "machine and share its CPUs; `other` below is everything else on the machine"
              + (" (with --url: the served stack included)" if result.get("url_given") else ""), ""]
    lines += ["## Results", "",
              "| workers | req/s | p50 ms | p99 ms | p99.9 ms | max ms | requests | errors (by status) | "
              "CPU cores: client / gateway / ranker / milvus / redis / other |",
              "|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for lv in levels:
        cpu = lv["cpu_cores"]
        cores = " / ".join(f"{cpu[k]:.2f}" if k in cpu else "–" for k in
                           ("client", "gateway", "ranker", "milvus-lite", "redis", "other"))
        mark = " (saturation)" if sat is not None and lv["concurrency"] == sat["concurrency"] else ""
        lines.append(f"| {lv['concurrency']}{mark} | {lv['throughput_rps']:.1f} | {lv['p50_ms']:.1f} | "
                     f"{lv['p99_ms']:.1f} | {lv['p999_ms']:.1f} | {lv['max_ms']:.1f} | {lv['requests']} | "
                     f"{fmt_errors(lv['errors_by_status'])} | {cores} |")
    lines += ["", f"![throughput and p99 vs concurrency]({out.with_suffix('.png').name})", ""]
    if sat is None:
        lines.append("Saturation: not reached — throughput grew by more than 10% at every step (or p99 did not "
                     "rise).")
    else:
        busiest = max(((k, v) for k, v in sat["cpu_cores"].items() if k not in ("machine_busy", "other")),
                      key=lambda kv: kv[1], default=None)
        lines.append(f"Saturation: {sat['concurrency']} worker(s), {sat['throughput_rps']:.1f} req/s at p99 "
                     f"{sat['p99_ms']:.1f} ms — no higher level adds more than 10% throughput while p99 rises "
                     "(more workers only queue)"
                     + (f"; the busiest process there: {busiest[0]} at {busiest[1]:.2f} cores, the whole machine at "
                        f"{sat['cpu_cores'].get('machine_busy', float('nan')):.2f} of {env['cpus']}."
                        if busiest else "."))
    below = [lv for lv in levels if sat is None or lv["concurrency"] <= sat["concurrency"]]
    errors_below = sum(lv["errors"] for lv in below)
    total_errors = sum(lv["errors"] for lv in levels)
    lines.append(f"Errors at or below saturation: {errors_below}; in all: {total_errors}"
                 + (f" (each logged with its request and response body in `{result['error_log']}`)."
                    if total_errors else "."))
    lines += ["", "p99 by request kind (ms):", "",
              "| workers | " + " | ".join(result["kinds"]) + " |", "|--:|" + "--:|" * len(result["kinds"])]
    for lv in levels:
        lines.append(f"| {lv['concurrency']} | " + " | ".join(
            f"{lv['p99_ms_by_kind'].get(k, float('nan')):.1f}" for k in result["kinds"]) + " |")
    if total_errors:
        lines += ["", "## Errors", ""]
        for lv in levels:
            if lv["errors"]:
                lines.append(f"- {lv['concurrency']} workers: {fmt_errors(lv['errors_by_kind'])}")
                for sample in lv["error_samples"][:2]:
                    lines.append(f"  - e.g. status {sample['status']} after {sample['latency_ms']} ms: "
                                 f"`{(sample['response'] or sample['failure'] or '')[:200]}`")
    lines += ["", "p99.9 rests on few samples at low throughput (a level of N requests has N/1000 of them above "
                  "it): read it as a rough tail bound.", ""]
    kept = ""
    if out.exists():  # a hand-written section survives re-runs
        text = out.read_text()
        if FINDINGS in text:
            kept = text[text.index(FINDINGS):]
    out.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


# ---- driving it --------------------------------------------------------------------------------

def wait_ready(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}/readyz did not answer 200 within {timeout:.0f} s")
        time.sleep(0.5)


def start_own_stack(workdir: Path, epochs: int) -> tuple[Any, Path, str]:
    from seqrec.services.stack import add_up_arguments, start_stack
    from seqrec.shared.local_services import free_port

    parser = argparse.ArgumentParser()
    add_up_arguments(parser)
    args = parser.parse_args(["--workdir", str(workdir), "--port", str(free_port()), "--epochs", str(epochs),
                              "--no-progress"])
    stack, root = start_stack(args, say=lambda m: print(f"[stack] {m}", file=sys.stderr, flush=True))
    return stack, root, f"http://127.0.0.1:{args.port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a running gateway (default: start the stack)")
    parser.add_argument("--bundle", type=Path, default=None, help="the bundle (or root) the --url gateway serves")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds at the start of each level")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the demo model")
    parser.add_argument("--workdir", type=Path, default=None, help="stack work directory (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a line about the machine for the report")
    parser.add_argument("--out", type=Path, default=Path("docs/load_test.md"))
    parser.add_argument("--error-log", type=Path, default=Path(tempfile.gettempdir()) / "seqrec_load_test_errors.jsonl",
                        help="every failed request with its payload and response body (JSON lines)")
    parser.add_argument("--render", type=Path, default=None,
                        help="only rewrite the report and plot from this results JSON (no load)")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)
    if args.url and args.bundle is None:
        parser.error("--url needs --bundle (the bundle or bundle root that gateway serves) to draw ids from")
    if any(c < 1 or c > 256 for c in args.concurrency) or args.seconds <= 0 or args.warmup < 0:
        parser.error("--concurrency must be 1..256 and --seconds positive")
    url = args.url.rstrip("/") if args.url else None
    if url is not None and urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address (this is a local load test)")

    def stop_on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop_on_signal)
    stack, tmp = None, None
    started = time.time()
    env = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
           "platform": platform.platform(), "load_start": load_average(), "note": args.note}
    try:
        env["busy_others"] = other_processes({os.getpid()})
        if url is None:
            if args.workdir is None:
                tmp = tempfile.TemporaryDirectory(prefix="seqrec-load-")
                workdir = Path(tmp.name)
            else:
                workdir = args.workdir
            t = time.perf_counter()
            stack, root, url = start_own_stack(workdir, args.epochs)
            stack_note = f"started by this script: demo data, {args.epochs} epochs, stack up in " \
                         f"{time.perf_counter() - t:.0f} s"
            pids = {"client": os.getpid(), **{c.name: c.process.pid for c in stack.children}}
            bundle_path = root
        else:
            wait_ready(url)
            stack_note, bundle_path, pids = "", args.bundle, {"client": os.getpid()}
        catalog = load_catalog(bundle_path)
        error_log = ErrorLog(args.error_log)
        levels = []
        for concurrency in args.concurrency:
            if stack is not None and (dead := stack.dead()) is not None:
                raise SystemExit(f"{dead.name} exited with {dead.process.returncode}:\n{dead.log_tail()}")
            level = run_level(url, catalog, concurrency, args.warmup, args.seconds, args.seed + concurrency,
                              error_log, pids)
            summary = summarize(level)
            levels.append(summary)
            print(f"{concurrency:>3} workers: {summary['throughput_rps']:7.1f} req/s  p50 {summary['p50_ms']:7.1f} ms"
                  f"  p99 {summary['p99_ms']:7.1f} ms  p99.9 {summary['p999_ms']:7.1f} ms  errors "
                  f"{fmt_errors(summary['errors_by_status'])}  cpu {summary['cpu_cores']}", file=sys.stderr,
                  flush=True)
        env["load_end"] = load_average()
        sat = saturation(levels)
        kinds = ["user_to_item", "sequential", "item_to_item", "contextual", "events"]
        command = "python bench/load_test.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        result = {"command": command.strip(), "target": url if args.url else "the stack on loopback",
                  "url_given": bool(args.url),
                  "stack": stack_note, "bundle": catalog.bundle, "environment": env,
                  "seconds_per_level": args.seconds, "warmup_s": args.warmup, "kinds": kinds,
                  "mix": {"events": EVENTS_SHARE, **{k: round(v * (1 - EVENTS_SHARE), 3) for k, v in MIX.items()}},
                  "levels": levels, "saturation": None if sat is None else sat["concurrency"],
                  "error_log": str(error_log.path), "total_seconds": round(time.time() - started, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        render(args.out.with_suffix(".json"), args.out)
        print(f"wrote {args.out}, {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}"
              + (f"; errors in {error_log.path}" if any(lv["errors"] for lv in levels) else ""), file=sys.stderr)
        return 1 if sat is not None and any(lv["errors"] for lv in levels
                                             if lv["concurrency"] <= sat["concurrency"]) else 0
    except KeyboardInterrupt:
        print("interrupted; stopping", file=sys.stderr)
        return 130
    finally:
        if stack is not None:
            stack.stop()
        if tmp is not None:
            tmp.cleanup()


def render(results: Path, out: Path) -> int:
    """The Markdown report and the plot from a results JSON (what a run writes, or --render)."""
    result = json.loads(results.read_text())
    sat = saturation(result["levels"])
    result["saturation"] = None if sat is None else sat["concurrency"]
    if results.resolve() == out.with_suffix(".json").resolve():
        results.write_text(json.dumps(result, indent=1))
    env = result["environment"]
    plot(result["levels"], sat, out.with_suffix(".png"),
         f"seqrec gateway, {env['cpus']} CPUs shared with the whole stack"
         + (" and other work" if env.get("busy_others") else ""))
    write_report(out, {**result, "saturation": sat})
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
