"""Growth curves: what training and serving cost as the catalog and the log grow (10k → 1M items).

    python bench/growth.py --out docs/growth.md                       # about 30 min on 2 shared cores
    python bench/growth.py --sizes 10k:100k --out /tmp/growth.md      # one small size, a few minutes
    python bench/growth.py --render-only --out docs/growth.md         # rewrite the page from docs/growth.json

Per size (items:interactions) on the synthetic series data of bench/synthetic_data.py, every phase
in its own child process (so its peak RSS is its own, read from /proc/self/status VmHWM):

1. `generate`: the Parquet file, streaming (cached under --scratch).
2. `load`: `load_interactions` (pandas reads the whole file), leave-one-out split, training windows:
   seconds and peak RSS; the item-index sequences are cached as .npz for the next phases.
3. `steps`: `train_model` for a fixed number of optimizer steps (--steps) at the same batch (--batch-size,
   --max-len), sampled softmax (the default, --negatives; row-sparse item tables), the same with dense AdamW
   over every item table as before (`sparse_items=False`, --dense-steps), and full softmax (negative_samples 0,
   --full-steps): sequences/s, item positions/s, masked positions per step, RSS before training (data + model)
   and the peak during the steps (VmHWM reset right before them). Throughput is that of the last of
   1 + --warmup-slices slices: the first step allocates gradients and optimizer state (gigabytes at 1M
   items), a start-up cost rather than a per-step one. No validation in this phase.
4. `useful`: `train_model` in slices of --eval-steps steps, each followed by full-catalog HR@10 of 1,000
   validation users (scored in blocks, so the score matrix never exceeds ~64 MB); stops once HR@10 is
   above 2x the popularity baseline's on the same users (and at least +0.01), or after --useful-seconds.
   Saves the model's item vectors and the intents of --queries test users for phase 5.
5. `serve`: a `milvus-lite server` (shared/local_services.start_milvus_lite), the trained item vectors
   loaded through `MilvusItemStore.load_items` twice, FLAT and HNSW (M 16, efConstruction 200, ef 128 as the
   ranker searches), then one query at a time through `MilvusItemStore.search` top-10: p50/p99 latency,
   HNSW recall@10 against FLAT, FLAT against numpy exact, and milvus-lite's peak RSS.

`train_model` is the trainer's own loop and model (`model_config`: the architecture that ships), bounded
through its `LoopLimits` (an "epoch" is a slice of --steps batches of the shuffled plan; validation is the
trainer's own `evaluate` on 1,000 users, or none in the `steps` phase); nothing in it is replaced.
Writes --out (Markdown), and .json and .png beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from growth_report import log, write_outputs
from growth_workers import WORKERS, summarize_ms  # noqa: F401 (summarize_ms: bench/gpu_check.py)

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

DEFAULT_SIZES = ("10k:100k", "100k:1M", "1M:10M")
GROWTH_ZIPF = 0.8  # series popularity exponent: ~84% of a 1M catalog gets interactions with 10M rows


# ---- small helpers ------------------------------------------------------------------------------------

def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_size(text: str) -> tuple[int, int]:
    items, sep, interactions = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ITEMS:INTERACTIONS (e.g. 100k:1M), got {text!r}")
    return parse_count(items), parse_count(interactions)


def run_worker(phase: str, args: dict[str, Any], timeout: float, env: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Run one phase in a child process (and its children: milvus-lite) with args["threads"] BLAS/OpenMP
    threads and `env` added; its JSON result, or {"error": ...}."""
    started = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", phase, "--worker-args", json.dumps(args)]
    threads = str(args["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           **(env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "process_wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return {"error": f"exit {proc.returncode}{killed}: {proc.stderr.strip()[-800:]}", "process_wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def run_size(n_items: int, n_interactions: int, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{n_items}-{n_interactions}-z{args.zipf:g}-s{args.seed}"
    scratch = args.scratch
    common = {"seed": args.seed, "max_len": args.max_len, "batch_size": args.batch_size, "threads": args.threads,
              "prepared": str(scratch / f"prepared-{tag}-L{args.max_len}.npz"),
              "vectors": str(scratch / f"vectors-{tag}.npz"), "scratch": str(scratch)}
    data = scratch / f"synth-{tag}.parquet"
    summary_file = data.with_suffix(".json")
    result: dict[str, Any] = {"items": n_items, "interactions": n_interactions, "phases": {}}
    phases = result["phases"]
    if data.is_file() and summary_file.is_file():
        phases["generate"] = {**json.loads(summary_file.read_text()), "cached": True}
    else:
        log(f"{n_items:,} items: generating {n_interactions:,} interactions")
        phases["generate"] = run_worker("generate", {**common, "data": str(data), "items": n_items,
                                                     "interactions": n_interactions, "zipf": args.zipf},
                                        args.phase_timeout)
        if "error" not in phases["generate"]:
            summary_file.write_text(json.dumps(phases["generate"]))
    if "error" in phases["generate"]:
        return result
    log(f"{n_items:,} items: load + split")
    phases["load"] = run_worker("load", {**common, "data": str(data)}, args.phase_timeout)
    if "error" in phases["load"]:
        return result
    log(f"{n_items:,} items: {args.steps} steps, sampled softmax ({args.negatives} negatives)")
    warm = {"warmup_epochs": args.warmup_slices}
    phases["steps_sampled"] = run_worker("steps", {**common, **warm, "negatives": args.negatives,
                                                   "steps": args.steps}, args.phase_timeout)
    if args.dense_steps:
        log(f"{n_items:,} items: {args.dense_steps} steps, sampled softmax with dense AdamW (before row-sparse tables)")
        phases["steps_sampled_dense"] = run_worker("steps", {**common, **warm, "negatives": args.negatives,
                                                             "steps": args.dense_steps, "sparse_items": False},
                                                   args.phase_timeout)
    estimate_gb = _full_softmax_gb(phases, n_items)
    if args.full_steps and estimate_gb is not None and estimate_gb > args.full_softmax_max_gb:
        phases["steps_full"] = {"error": f"skipped: logits alone would take about {estimate_gb:.1f} GB "
                                         f"(> --full-softmax-max-gb {args.full_softmax_max_gb:g})"}
    elif args.full_steps:
        log(f"{n_items:,} items: {args.full_steps} steps, full softmax")
        phases["steps_full"] = run_worker("steps", {**common, **warm, "negatives": 0, "steps": args.full_steps},
                                          args.phase_timeout)
    log(f"{n_items:,} items: time to a useful model (at most {args.useful_seconds:g} s)")
    phases["useful"] = run_worker("useful", {**common, "negatives": args.negatives, "eval_steps": args.eval_steps,
                                             "useful_seconds": args.useful_seconds,
                                             "useful_max_steps": args.useful_max_steps, "queries": args.queries,
                                             "eval_probe_users": args.eval_probe_users},
                                  args.useful_seconds + args.phase_timeout)
    if "error" in phases["useful"] or args.no_serve:
        return result
    log(f"{n_items:,} items: milvus-lite FLAT and HNSW")
    phases["serve"] = run_worker("serve", {**common, "milvus_timeout": args.phase_timeout}, args.serve_timeout)
    return result


def _full_softmax_gb(phases: dict[str, Any], n_items: int) -> float | None:
    """Logits of one full-softmax step in GB: masked positions x items x 4 bytes (from the sampled run)."""
    masked = phases.get("steps_sampled", {}).get("masked_per_step")
    return None if masked is None else masked * n_items * 4 / 2 ** 30


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    versions = {}
    for name in ("torch", "numpy", "pandas", "pyarrow", "pymilvus", "milvus-lite", "faiss-cpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "memory_gb": round(mem_gb, 1),
            "python": platform.python_version(), "load_average_start": list(os.getloadavg()), "versions": versions}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in DEFAULT_SIZES],
                   help="ITEMS:INTERACTIONS pairs, e.g. 10k:100k 1M:10M")
    p.add_argument("--zipf", type=float, default=GROWTH_ZIPF)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--negatives", type=int, default=100)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of the throughput/memory phase")
    p.add_argument("--warmup-slices", type=int, default=1,
                   help="slices of steps run before the measured one (the first allocates the optimizer state)")
    p.add_argument("--dense-steps", type=int, default=40,
                   help="the same with dense AdamW over every item table, as before row-sparse tables (0: skip)")
    p.add_argument("--full-steps", type=int, default=10, help="the same with full softmax (0: skip)")
    p.add_argument("--full-softmax-max-gb", type=float, default=4.0,
                   help="skip full softmax where one copy of its logits would exceed this")
    p.add_argument("--eval-steps", type=int, default=50, help="steps between validations (useful phase)")
    p.add_argument("--useful-seconds", type=float, default=420, help="give up on a useful model after this")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP/torch threads of every phase and of milvus-lite (1: the CPUs are shared)")
    p.add_argument("--eval-probe-users", type=int, default=500,
                   help="users scored by the trainer's own `evaluate` to measure its memory per user x item")
    p.add_argument("--useful-max-steps", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=200, help="single queries per index type")
    p.add_argument("--no-serve", action="store_true")
    p.add_argument("--phase-timeout", type=float, default=900)
    p.add_argument("--serve-timeout", type=float, default=1800)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "seqrec-bench" / "growth")
    p.add_argument("--out", type=Path, default=Path("docs/growth.md"))
    p.add_argument("--render-only", action="store_true", help="rewrite the page and plot from the JSON")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.worker_args))
        result["child_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    if args.render_only:
        write_outputs(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return 0
    args.scratch.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": shlex.join(["python", "bench/growth.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(), "zipf": args.zipf, "max_len": args.max_len, "batch_size": args.batch_size,
        "negatives": args.negatives, "eval_steps": args.eval_steps, "threads": args.threads, "results": []}
    for n_items, n_interactions in args.sizes:
        report["results"].append(run_size(n_items, n_interactions, args))
        report["load_average_end"] = list(os.getloadavg())
        write_outputs(report, args.out)  # after every size: a partial page survives an interrupted run
    return 0


if __name__ == "__main__":
    sys.exit(main())
