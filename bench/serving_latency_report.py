"""The serving-latency benchmark's page: derived numbers, Markdown and the plot, from its report."""

from __future__ import annotations

import contextlib
import os
import platform
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

GOAL_P50, GOAL_P99 = 2.0, 3.0  # latency over (encoder + one search): the goal the page measures against

# ---- derived numbers -------------------------------------------------------------------------

def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per query type at the lowest concurrency: p50 and p99 over (encoder p50 + search p50)."""
    floor = result["floor"]
    base = floor["encoder"]["p50_ms"] + floor["search"]["p50_ms"]
    out = {}
    for kind, levels in result["load"].items():
        first = min(levels, key=lambda lv: lv["concurrency"])
        out[kind] = {"concurrency": first["concurrency"], "floor_ms": base, "p50_ms": first["p50_ms"],
                     "p99_ms": first["p99_ms"], "p50_ratio": first["p50_ms"] / base,
                     "p99_ratio": first["p99_ms"] / base}
    return out


def breakdown(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Estimated p50 parts of each query type (ms) from the floor, against the measured p50 at c=1."""
    f = {k: v["p50_ms"] for k, v in result["floor"].items()}
    parts = {
        "user_to_item": {"redis_read": f["redis_read"], "encoder": f["encoder"],
                         "search": f["search_excluding_history"]},
        "contextual": {"redis_read": f["redis_read"], "encoder": f["encoder"], "search": f["search_excluding_history"]},
        "sequential": {"encoder": f["encoder"], "search": f["search"]},
        "item_to_item": {"search": f["search_i2i"]},
    }
    out = {}
    for kind, r in ratios(result).items():
        row = {"transport": f["grpc_model_info"], **parts[kind]}
        row["sum"] = sum(row.values())
        row["in_process"] = f[f"in_process_{kind}"]
        row["measured"] = r["p50_ms"]
        row["unexplained"] = r["p50_ms"] - row["sum"]
        out[kind] = row
    return out


# ---- report ----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    versions = {}
    for name in ("grpcio", "onnxruntime", "onnxruntime-gpu", "pymilvus", "milvus-lite", "redis", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": list(os.getloadavg()), "versions": versions}


def json_safe(value: Any) -> Any:
    """NaN (no successful request) as null, so the JSON file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _engine(result: dict[str, Any]) -> str:
    return f"{result['engine']}, {result['index']}"


def _pairs(report: dict[str, Any]) -> dict[tuple[int, str], dict[str, dict[str, Any]]]:
    """Results by (items, index), then by engine name."""
    out: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for result in report["results"]:
        out.setdefault((result["items"], result["index"]), {})[result["engine"]] = result
    return out


def _peak(result: dict[str, Any], kind: str) -> float:
    return max(lv["rps"] for lv in result["load"][kind])


def goals(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met) for the Milvus server, from whatever the run covered."""
    rows: list[tuple[str, str, bool | None]] = []
    for (items, index), engines in _pairs(report).items():
        server, lite = engines.get("milvus-server"), engines.get("milvus-lite")
        if server is not None and "user_to_item" in server["load"]:
            r = ratios(server)["user_to_item"]
            rows.append((f"{items:,} items, {index}: server user_to_item p50 <= {GOAL_P50:g}x (encoder + one search)",
                         f"{_fmt(r['p50_ms'])} ms over {_fmt(r['floor_ms'])} ms = {r['p50_ratio']:.2f}x",
                         r["p50_ratio"] <= GOAL_P50))
        if server is not None and lite is not None and items == 100_000:
            for kind in server["load"]:
                if kind in lite["load"]:
                    ratio = _peak(server, kind) / _peak(lite, kind)
                    rows.append((f"{items:,} items, {index}: server {kind} throughput >= 5x milvus-lite's",
                                 f"peak {_peak(server, kind):.0f} against {_peak(lite, kind):.0f} req/s = "
                                 f"{ratio:.1f}x", ratio >= 5))
        if server is not None and items >= 1_000_000 and index == "HNSW":
            recall = next(v for k, v in server["recall"].items() if k.startswith("recall@"))
            search = server["floor"]["search"]["p50_ms"]
            rows.append((f"{items:,} items, HNSW on the server: recall@{report['top_k']} >= 0.95 against exact "
                         "search, search p50 <= 10 ms", f"recall {recall:.3f}, search p50 {_fmt(search)} ms",
                         recall >= 0.95 and search <= 10))
    return rows


def _side_by_side(report: dict[str, Any]) -> list[str]:
    lines = ["## The two engines side by side", "",
             "| items | index | query | clients | lite req/s | lite p50 / p99 ms | server req/s | "
             "server p50 / p99 ms | server / lite req/s |", "|--:|---|---|--:|--:|--:|--:|--:|--:|"]
    for (items, index), engines in _pairs(report).items():
        lite, server = engines.get("milvus-lite"), engines.get("milvus-server")
        base = server or lite
        for kind, levels in base["load"].items():
            for n, level in enumerate(levels):
                cells = []
                for result in (lite, server):
                    lv = result["load"][kind][n] if result is not None and kind in result["load"] else None
                    cells += ["-", "-"] if lv is None else \
                        [f"{lv['rps']:.0f}", f"{_fmt(lv['p50_ms'])} / {_fmt(lv['p99_ms'])}"]
                ratio = "-" if lite is None or server is None else \
                    f"{server['load'][kind][n]['rps'] / max(lite['load'][kind][n]['rps'], 1e-9):.1f}x"
                lines.append(f"| {items:,} | {index} | {kind} | {level['concurrency']} | " + " | ".join(cells)
                             + f" | {ratio} |")
    lines += ["", "| items | engine | index | start s | publish s | memory MiB (Milvus group) | "
              f"recall@{report['top_k']} vs exact | search p50 / p99 ms |", "|--:|---|---|--:|--:|--:|--:|--:|"]
    for r in report["results"]:
        recall = next(v for k, v in r["recall"].items() if k.startswith("recall@"))
        s = r["floor"]["search"]
        lines.append(f"| {r['items']:,} | {r['engine']} | {r['index']} | {r['milvus_start_s']:.1f} | "
                     f"{r['publish_s']:.1f} | {r['memory_mib']['milvus']:,.0f} | {recall:.3f} | "
                     f"{_fmt(s['p50_ms'])} / {_fmt(s['p99_ms'])} |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Ranker serving latency: Milvus Lite and a Milvus server", "",
        "Generated by `bench/serving_latency.py` "
        f"(the whole run took {report.get('wall_s', float('nan')) / 60:.0f} min); rerun with:", "",
        f"    {report['command']}", "",
        *([report["note"], ""] if report.get("note") else []),
        f"- machine: {m['nproc']} CPUs (`nproc`), {m['cpu_model']}; Python {m['python']}; {m['platform']}",
        f"- load average (1/5/15 min) at start {' / '.join(f'{x:.2f}' for x in m['load_average_start'])}, "
        f"at end {' / '.join(f'{x:.2f}' for x in report['load_average_end'])}: anything above 0 was other work "
        "sharing the CPUs",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- engines: {', '.join(report['engines'])}; each run starts fresh stores, publishes the bundle with its "
        "index (`seqrec publish`), and starts the ranker as its own process",
        f"- {report['seconds']:g} s per level after {report['warmup']:g} s warm-up; floor parts "
        f"{report['floor_seconds']:g} s each; top_k {report['top_k']}; {report['users']} users with histories of "
        "5-100 items; bundles from the trainer's own builder (untrained: a cost-only run); ranker with "
        "SEQREC_ORT_THREADS=1 on the CPU provider, default gRPC settings"
        + (f" plus {report['ranker_env']}" if report["ranker_env"] else ""),
        "- clients, ranker, redis-server and Milvus all run on this machine and share its CPUs; every "
        "client thread has its own channel (connection) and sends its next request when the last one returns",
        "", "![p50 latency and throughput per engine](serving_latency.png)", "",
        "## Goals (Milvus server)", "", "| goal | measured | met |", "|---|---|---|",
        *[f"| {goal} | {measured} | {'met' if met else 'missed'} |" for goal, measured, met in goals(report)], "",
        *_side_by_side(report),
    ]
    if report.get("failed"):
        lines += ["## Runs that failed", "", "| items | engine | index | error |", "|--:|---|---|---|",
                  *[f"| {f['items']:,} | {f['engine']} | {f['index']} | {f['error'][:300]} |"
                    for f in report["failed"]], ""]
    for result in report["results"]:
        lines += _catalog_section(result)
    lines += [
        "## How to read this", "",
        "- *floor*: each part alone, one call at a time: `encoder` is `OnnxEncoder.intents` on one 49-item "
        "history (1 thread, in the benchmark process); `search` is `MilvusItemStore.search` top-k with one "
        "query; `search_excluding_history` is the over-fetch user_to_item does (top-k + the history's items); "
        "`search_i2i` is item_to_item's search; `redis_read` reads 49 history entries; `grpc_model_info` and "
        "`grpc_health_check` are round trips to the ranker that do (almost) no work; `in_process_*` calls the "
        "ranker's servicer in the benchmark process (all the work of a request, no gRPC).",
        f"- *recall@k*: of the exact top-k by inner product (numpy over every item vector) for {200} encoder "
        "intents, the share the served index returns; FLAT is exact, HNSW approximate (ef 128).",
        "- *ratio*: p50 (p99) at the lowest concurrency over encoder p50 + search p50; the goal is p50 <= "
        f"{GOAL_P50:g}x and p99 <= {GOAL_P99:g}x. item_to_item needs no encoder, so its ratio is lenient.",
        "- *where the time goes*: transport (GetModelInfo round trip) + the parts each query type calls, "
        "against the measured p50; `unexplained` is what the sum misses (servicer, vocab, protobuf, "
        "thread hand-offs). `in-process` is the ranker's own work measured without gRPC.",
        "- *Load*: p50/p99/max are over successful requests only; `errors` counts failed ones by status code.",
        "- *CPU cores*: CPU seconds per wall second of each process group during the level, from /proc "
        "(milvus-server's group holds its launcher and the milvus binary); `client` is this benchmark process.",
        "- *memory*: resident memory of each process group after publishing, before the load.", "",
    ]
    return "\n".join(lines)


def _findings(result: dict[str, Any]) -> list[str]:
    """A few computed sentences: what dominates, where throughput saturates, what a flush would change."""
    floor, load = result["floor"], result["load"]
    p50 = {k: v["p50_ms"] for k, v in floor.items()}
    lines = []
    if "user_to_item" in load:
        first = min(load["user_to_item"], key=lambda lv: lv["concurrency"])
        lines.append(f"- user_to_item at {first['concurrency']} client(s): p50 {_fmt(first['p50_ms'])} ms; its parts "
                     f"alone: Milvus search {_fmt(p50['search_excluding_history'])} ms, the encoder "
                     f"{_fmt(p50['encoder'])} ms, Redis {_fmt(p50['redis_read'])} ms, a no-work gRPC round trip "
                     f"{_fmt(p50['grpc_model_info'])} ms.")
    best_kind, best = max(((k, lv) for k, levels in load.items() for lv in levels), key=lambda x: x[1]["rps"])
    cores = best["cpu_cores"]
    lines.append(f"- Highest throughput {best['rps']:.1f} req/s ({best_kind}, {best['concurrency']} client(s)), with "
                 f"{result['engine']} at {cores['milvus']:.2f} CPU cores and the ranker at {cores['ranker']:.2f}.")
    failed = sum(lv["errors"] for levels in load.values() for lv in levels)
    if failed:
        codes = sum((Counter(lv["error_codes"]) for levels in load.values() for lv in levels), Counter())
        lines.append(f"- {failed} requests failed over all levels ({dict(codes)}).")
    return lines


def _catalog_section(result: dict[str, Any]) -> list[str]:
    lines = [f"## {result['items']:,} items on {_engine(result)}", "",
             f"Bundle build {result['bundle_build_s']:.0f} s (0 = cached), {result['engine']} start "
             f"{result['milvus_start_s']:.1f} s, publish {result['publish_s']:.1f} s, ranker start to SERVING "
             f"{result['ranker_start_s']:.1f} s; memory MiB {({k: round(v) for k, v in result['memory_mib'].items()})}"
             f"; {', '.join(f'{k} {v:.3f}' for k, v in result['recall'].items() if k != 'n')} over "
             f"{result['recall']['n']} intents.", "",
             *_findings(result), "",
             "### Floor (one call at a time)", "", "| part | n | p50 ms | p99 ms | mean ms |", "|---|--:|--:|--:|--:|"]
    for name, s in result["floor"].items():
        cells = " | ".join(_fmt(s[k], 3) for k in ("p50_ms", "p99_ms", "mean_ms"))
        lines.append(f"| {name} | {s['n']} | {cells} |")
    rl = result["ranker_log"]
    lines += ["", f"Ranker log: lines by level {rl['levels']}, refused requests by code {rl['refused'] or 'none'}, "
              f"{rl['goaway_lines']} GOAWAY notices."]
    lines += ["", "### Load (closed loop)", "",
              "| query | clients | req/s | p50 ms | p99 ms | max ms | errors "
              "| CPU cores ranker / milvus / redis / client |",
              "|---|--:|--:|--:|--:|--:|--:|---|"]
    for kind, levels in result["load"].items():
        for lv in levels:
            c = lv["cpu_cores"]
            errors = str(lv["errors"]) + (f" {lv['error_codes']}" if lv["errors"] else "")
            lines.append(f"| {kind} | {lv['concurrency']} | {lv['rps']:.0f} | {_fmt(lv['p50_ms'])} | "
                         f"{_fmt(lv['p99_ms'])} | {_fmt(lv['max_ms'], 1)} | {errors} | {c['ranker']:.2f} / "
                         f"{c['milvus']:.2f} / {c['redis']:.2f} / {c['client']:.2f} |")
    lines += ["", "### Ratio to the floor (lowest concurrency)", "",
              f"| query | p50 ms | p99 ms | encoder + search p50 ms | p50 ratio | p99 ratio | "
              f"p50 <= {GOAL_P50:g}x and p99 <= {GOAL_P99:g}x |",
              "|---|--:|--:|--:|--:|--:|---|"]
    for kind, r in ratios(result).items():
        met = r["p50_ratio"] <= GOAL_P50 and r["p99_ratio"] <= GOAL_P99
        lines.append(f"| {kind} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['floor_ms'])} | "
                     f"{r['p50_ratio']:.2f}x | {r['p99_ratio']:.2f}x | {'met' if met else 'missed'} |")
    lines += ["", "### Where the time goes (p50 ms, lowest concurrency; estimate)", "",
              "| query | transport | redis | encoder | search | sum | in-process | measured | unexplained |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for kind, row in breakdown(result).items():
        cells = [_fmt(row[k]) if k in row else "-" for k in ("transport", "redis_read", "encoder", "search", "sum",
                                                             "in_process", "measured", "unexplained")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(report: dict[str, Any], path: Path) -> None:
    """Per (items, index): p50 latency (top) and throughput (bottom) against clients; one colour per query
    type, solid for the Milvus server, dashed for Milvus Lite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(report)
    fig, axes = plt.subplots(2, len(pairs), figsize=(5 * len(pairs), 8), squeeze=False)
    styles = {"milvus-server": "o-", "milvus-lite": "x--"}
    for col, ((items, index), engines) in enumerate(pairs.items()):
        top, bottom = axes[0][col], axes[1][col]
        for engine, result in sorted(engines.items()):
            for n, (kind, levels) in enumerate(result["load"].items()):
                x = [lv["concurrency"] for lv in levels]
                label = f"{kind}, {engine}"
                top.plot(x, [lv["p50_ms"] for lv in levels], styles[engine], color=f"C{n}", label=label)
                bottom.plot(x, [lv["rps"] for lv in levels], styles[engine], color=f"C{n}", label=label)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("concurrent clients")
        top.set_title(f"{items:,} items, {index}")
        top.set_ylabel("p50 latency (ms)")
        bottom.set_ylabel("throughput (req/s)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"seqrec ranker over gRPC, {report['machine']['nproc']} CPUs shared by clients and servers: "
                 "Milvus server solid, Milvus Lite dashed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
