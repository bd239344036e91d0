"""Milvus Lite against a real Milvus standalone server, through the store the ranker uses.

    python bench/milvus_engines.py --items 10000 100000 --queries 300 --out docs/milvus_engines.md

Per engine (`milvus-lite server` 3.x; `milvus-server` 2.3.5 from the dev extra), each started fresh on a free
port by `shared/local_services.py`: seconds until it answers, resident memory of its process group once the
items are loaded, and `MilvusItemStore.search` latency (one client, top 10, FLAT inner product, unit-variance
random vectors of dimension 65, a metadata schema with a string, an int and a bool column, some values
missing) without a filter and with a filter on the string column. Both engines get the same vectors and
queries. Cost only: the vectors are random, and the store's exactness is what tests/test_vector_store.py checks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seqrec.services.ranker.filters import build_expression
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.local_services import ManagedProcess, start_milvus_lite, start_milvus_server

DIM = 65
SCHEMA = {"brand": "string", "year": "int64", "in_stock": "bool"}
FILTER = {"meta.brand": "b3"}
STARTERS = {"milvus-lite": start_milvus_lite, "milvus-server": start_milvus_server}


def _catalog(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    meta = [{"brand": f"b{i % 10}", "year": 2000 + i % 25, **({"in_stock": bool(i % 3)} if i % 7 else {})}
            for i in range(n)]
    return {"vectors": rng.normal(size=(n, DIM)).astype(np.float32), "item_indices": np.arange(1, n + 1),
            "item_ids": [f"i{i}" for i in range(1, n + 1)], "metadata": meta, "metadata_schema": SCHEMA,
            "display_names": [None] * n}


def _rss_mib(server: ManagedProcess) -> float:
    """Resident memory of every process in the server's process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == server.process.pid:
            total += int(fields[21]) * 4096
    return total / 2**20


def _latency(store: MilvusItemStore, version: str, queries: np.ndarray, expr: str) -> dict[str, float]:
    for query in queries[:10]:  # warm-up
        store.search(version, query[None, :], 10, expr)
    seconds = []
    for query in queries:
        started = time.perf_counter()
        store.search(version, query[None, :], 10, expr)
        seconds.append(time.perf_counter() - started)
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "req_per_s": round(len(ms) / float(np.sum(ms) / 1000), 1)}


def measure(engine: str, sizes: list[int], n_queries: int, scratch: Path) -> list[dict]:
    started = time.perf_counter()
    server = STARTERS[engine](scratch / engine)
    ready_s = time.perf_counter() - started
    queries = np.random.default_rng(1).normal(size=(n_queries, DIM)).astype(np.float32)
    rows = []
    try:
        store = MilvusItemStore(f"http://{server.address}", timeout=600.0)
        for n in sizes:
            version = f"bench-{n}"
            began = time.perf_counter()
            store.load_items(version, **_catalog(n))
            load_s = time.perf_counter() - began
            row = {"engine": engine, "items": n, "ready_s": round(ready_s, 1), "load_s": round(load_s, 1),
                   "rss_mib": round(_rss_mib(server)),
                   "plain": _latency(store, version, queries, ""),
                   "filtered": _latency(store, version, queries, build_expression(FILTER, SCHEMA))}
            print(json.dumps(row), flush=True)
            rows.append(row)
            store.drop(version)
        store.close()
    finally:
        server.stop()
    return rows


def report(rows: list[dict], command: str) -> str:
    lines = ["# Milvus Lite and a Milvus server, side by side", "",
             "Produced by `bench/milvus_engines.py`; regenerate with:", "", f"    {command}", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "| engine | items | ready s | load s | RSS MiB | p50 ms | p99 ms | req/s | filtered p50 ms | "
             "filtered p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['items']:,} | {r['ready_s']} | {r['load_s']} | {r['rss_mib']} | "
                     f"{r['plain']['p50_ms']} | {r['plain']['p99_ms']} | {r['plain']['req_per_s']} | "
                     f"{r['filtered']['p50_ms']} | {r['filtered']['p99_ms']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--engines", nargs="+", default=list(STARTERS), choices=list(STARTERS))
    parser.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqrec-engines-") as scratch:
        rows = [row for engine in args.engines for row in measure(engine, args.items, args.queries, Path(scratch))]
    if args.out is not None:
        args.out.write_text(report(rows, shlex.join(["python", "bench/milvus_engines.py", *sys.argv[1:]])))
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
