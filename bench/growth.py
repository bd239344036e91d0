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
   --max-len), sampled softmax (the default, --negatives) and full softmax (negative_samples 0, --full-steps):
   sequences/s, item positions/s, masked positions per step, RSS before training (data + model) and the
   peak during the steps (VmHWM reset right before them). No validation in this phase.
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
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from growth_report import USEFUL_FACTOR, USEFUL_MARGIN, VALID_SAMPLE, log, write_outputs

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


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak) in MB from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


# ---- workers (child processes) ------------------------------------------------------------------------

def worker_generate(a: dict[str, Any]) -> dict[str, Any]:
    from synthetic_data import generate

    return asdict(generate(Path(a["data"]), a["items"], a["interactions"], seed=a["seed"], exponent=a["zipf"],
                           progress=False))


def worker_load(a: dict[str, Any]) -> dict[str, Any]:
    from seqrec.services.trainer.data import load_interactions
    from seqrec.services.trainer.split import leave_one_out, training_windows
    from seqrec.shared.config import DataConfig

    started = time.perf_counter()
    data = load_interactions(DataConfig(data=a["data"]))
    load_s = time.perf_counter() - started
    after_load = proc_status()
    started = time.perf_counter()
    split = leave_one_out(data.sequences)
    windows = training_windows(split.train, a["max_len"], 0, "sliding_window")
    split_s = time.perf_counter() - started
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    np.savez(a["prepared"], items=np.concatenate(data.sequences).astype(np.int32), lengths=lengths,
             n_items=np.int64(data.vocab.n_items))
    return {"load_s": load_s, "split_s": split_s, "rows": int(lengths.sum()), "users": len(lengths),
            "warm_items": data.vocab.n_items, "windows": len(windows), "windows_mb": windows.nbytes / 2 ** 20,
            "rss_after_load_mb": after_load.get("VmRSS"), "peak_rss_mb": proc_status().get("VmHWM")}


def _prepare_training(a: dict[str, Any], negatives: int, epochs: int, eval_every: int = 0):
    """(split, hparams, model, train counts, n_items) from the cached sequences, as pipeline.py builds them."""
    import torch

    from seqrec.services.trainer.bundle_builder import model_config
    from seqrec.services.trainer.model import BERT4Rec
    from seqrec.services.trainer.split import leave_one_out
    from seqrec.shared.config import build_hparams

    torch.manual_seed(a["seed"])
    cached = np.load(a["prepared"])
    n_items = int(cached["n_items"])
    sequences = np.split(cached["items"].astype(np.int64), np.cumsum(cached["lengths"])[:-1])
    split = leave_one_out(sequences)
    del sequences, cached
    hp = build_hparams(max_len=a["max_len"], batch_size=a["batch_size"], negative_samples=negatives,
                       epochs=epochs, eval_every=eval_every, patience=10 ** 6)
    counts = np.bincount(np.concatenate(split.train), minlength=n_items + 2)
    model = BERT4Rec(model_config(hp, n_items + 2, hybrid=False))  # the architecture the trainer ships
    model.init_output_bias(torch.from_numpy(counts))
    return split, hp, model, counts, n_items


def worker_steps(a: dict[str, Any]) -> dict[str, Any]:
    """A fixed number of optimizer steps: throughput and the peak RSS of training itself.

    Optional: `warmup_epochs` slices of `steps` steps first (throughput is then the last slice's: no
    start-up costs), `sync_debug` (CUDA: count the host syncs torch reports, by message)."""
    import warnings
    from collections import Counter

    import torch

    from seqrec.services.trainer import train as trainer

    warmup = int(a.get("warmup_epochs", 0))
    split, hp, model, counts, n_items = _prepare_training(a, a["negatives"], epochs=1 + warmup)
    marks: dict[str, Any] = {}

    def no_validation(*_args: Any, **_kwargs: Any) -> dict[str, float]:
        if "peak_mb" not in marks:  # called right after the epoch's steps: their peak, before anything else
            marks["peak_mb"] = proc_status().get("VmHWM")
        return {}

    limits = trainer.LoopLimits(steps_per_epoch=a["steps"], validate=no_validation)
    params = sum(p.numel() for p in model.parameters())
    before = proc_status().get("VmRSS")
    marks["reset"] = reset_peak_rss()
    device = trainer.pick_device()
    syncs: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        if a.get("sync_debug") and device.type == "cuda":
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        result = trainer.train_model(model, split, hp, n_items, counts, a["seed"], progress=False, limits=limits)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            syncs[f"{Path(w.filename).name}:{w.lineno}"] += 1
    last = result.history[-1]  # the last slice: no start-up costs after warm-up
    seconds = last.seconds
    out = {"mode": "sampled" if a["negatives"] else "full", "negatives": a["negatives"], "steps": last.steps,
           "seconds": seconds, "sequences_per_s": last.sequences / seconds,
           "positions_per_s": last.positions / seconds, "steps_per_s": last.steps / seconds,
           "masked_per_step": last.masked / max(last.steps, 1),
           "params": params, "param_state_mb": 4 * 4 * params / 2 ** 20,  # weights, grads, 2 AdamW moments
           "rss_before_mb": before, "peak_rss_mb": marks.get("peak_mb"), "peak_reset": marks["reset"],
           "threads": torch.get_num_threads(), "loss": result.history[-1].loss, "device": result.device,
           "warmup_epochs": warmup}
    if device.type == "cuda":
        precision = trainer.mixed_precision(device)
        out.update({"precision": "fp32" if precision is None else str(precision).removeprefix("torch."),
                    "gpu": torch.cuda.get_device_name(device),
                    "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20})
        if a.get("sync_debug"):
            out["host_syncs"] = dict(syncs)
    return out


class _Useful(Exception):
    pass


def worker_useful(a: dict[str, Any]) -> dict[str, Any]:
    """Train in slices of eval_steps steps until validation HR@10 is clearly above popularity, or time runs out."""
    import torch

    from seqrec.services.trainer import train as trainer
    from seqrec.services.trainer.evaluate import evaluate as trainer_evaluate
    from seqrec.services.trainer.evaluate import model_scorer
    from seqrec.services.trainer.pipeline import popularity_metrics
    from seqrec.shared.history import encode_histories

    max_slices = max(1, a["useful_max_steps"] // a["eval_steps"])
    split, hp, model, counts, n_items = _prepare_training(a, a["negatives"], epochs=max_slices, eval_every=1)
    validate = lambda m, eval_set, mi: trainer_evaluate(m, eval_set, mi) if len(eval_set) > 1 else {}  # noqa: E731
    limits = trainer.LoopLimits(steps_per_epoch=a["eval_steps"], validate=validate, valid_users=VALID_SAMPLE,
                                probe_users=1)  # no train probe: one user is skipped
    mask_index = n_items + 1
    steps = 0
    valid = split.valid.sample(VALID_SAMPLE, a["seed"])  # the sample train_model validates on
    popularity = popularity_metrics(counts, valid)
    goal = max(USEFUL_FACTOR * popularity["hr@10"], popularity["hr@10"] + USEFUL_MARGIN)
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    train_s = 0.0

    def on_epoch(record: Any) -> None:
        nonlocal train_s, steps
        train_s += record.seconds
        steps += record.steps
        hr = record.valid.get("hr@10", 0.0)
        curve.append({"steps": steps, "wall_s": time.perf_counter() - started, "train_s": train_s,
                      "hr@10": hr, "ndcg@10": record.valid.get("ndcg@10", 0.0), "loss": record.loss})
        if hr > goal or time.perf_counter() - started > a["useful_seconds"]:
            raise _Useful

    with torch.no_grad():  # the step-0 model (output bias = log popularity) for the curve
        curve.append({"steps": 0, "wall_s": 0.0, "train_s": 0.0, **{k: trainer_evaluate(model, valid, mask_index)[k]
                                                                     for k in ("hr@10", "ndcg@10")}, "loss": None})
    try:
        trainer.train_model(model, split, hp, n_items, counts, a["seed"], on_epoch=on_epoch, progress=False,
                            limits=limits)
    except _Useful:
        pass
    reached = next((c for c in curve if c["hr@10"] > goal), None)
    model.eval()
    rng = np.random.default_rng(a["seed"] + 1)
    picks = rng.choice(len(split.test), size=min(a["queries"], len(split.test)), replace=False)
    with torch.no_grad():
        ids = encode_histories([split.test.inputs[i] for i in picks], hp.max_len, mask_index)
        intents = model(torch.from_numpy(ids)).numpy().astype(np.float32)
    vectors = model_scorer(model).rows[1:mask_index]  # the scoring contract's rows
    np.savez(a["vectors"], vectors=vectors, intents=intents)
    del vectors, intents
    # The trainer's own `evaluate` scores users in blocks of its score matrix: measure its peak on a few users.
    probe = split.valid.sample(a["eval_probe_users"], a["seed"])
    before = proc_status().get("VmRSS")
    reset_peak_rss()
    t0 = time.perf_counter()
    trainer_evaluate(model, probe, mask_index)
    eval_probe = {"users": len(probe), "seconds": time.perf_counter() - t0,
                  "peak_delta_mb": proc_status().get("VmHWM", 0) - (before or 0),
                  "score_matrix_mb": len(probe) * n_items * 4 / 2 ** 20}
    return {"eval_probe": eval_probe, "n_items": n_items, "valid_users": len(split.valid),
            "test_users": len(split.test), "popularity_hr10": popularity["hr@10"], "goal_hr10": goal,
            "reached": reached is not None,
            "reached_wall_s": reached["wall_s"] if reached else None,
            "train_s": reached["train_s"] if reached else None,
            "steps": reached["steps"] if reached else None, "steps_run": steps,
            "wall_run_s": time.perf_counter() - started, "final": curve[-1], "curve": curve,
            "peak_rss_mb": proc_status().get("VmHWM")}


def worker_serve(a: dict[str, Any]) -> dict[str, Any]:
    """FLAT and HNSW collections of the trained vectors in a milvus-lite server; one query at a time."""
    from seqrec.services.ranker.vector_store import MilvusItemStore
    from seqrec.shared.local_services import start_milvus_lite

    saved = np.load(a["vectors"])
    vectors, intents = saved["vectors"], saved["intents"]
    n = len(vectors)
    indices = np.arange(1, n + 1)
    ids = [f"i{i}" for i in indices]
    out: dict[str, Any] = {"items": n, "queries": len(intents)}
    exact = np.argsort(-(intents @ vectors.T), axis=1)[:, :10] + 1
    timing = []
    for q in intents[:50]:
        t0 = time.perf_counter()
        scores = vectors @ q
        np.argpartition(-scores, 10)[:10]
        timing.append(time.perf_counter() - t0)
    out["numpy_exact"] = summarize_ms(timing)
    with tempfile.TemporaryDirectory(prefix="growth-milvus-", dir=a["scratch"]) as tmp:
        server = start_milvus_lite(Path(tmp) / "milvus")
        store = MilvusItemStore(f"http://{server.address}", timeout=a["milvus_timeout"])
        try:
            found: dict[str, np.ndarray] = {}
            for kind in ("FLAT", "HNSW"):
                version = f"growth_{kind.lower()}"
                t0 = time.perf_counter()
                store.load_items(version, vectors, indices, ids, [{}] * n, {}, [None] * n, index_type=kind)
                load_s = time.perf_counter() - t0
                for q in intents[:5]:  # warm-up
                    store.search(version, q[None, :], 10)
                times, hits = [], []
                for q in intents:
                    t0 = time.perf_counter()
                    result = store.search(version, q[None, :], 10)[0]
                    times.append(time.perf_counter() - t0)
                    hits.append([h[0] for h in result])
                found[kind] = np.array(hits)
                out[kind] = {"load_s": load_s, **summarize_ms(times)}
                log(f"  {kind}: load {load_s:.1f} s, search p50 {out[kind]['p50_ms']:.2f} ms")
            out["milvus_peak_rss_mb"] = proc_status(server.process.pid).get("VmHWM")
            out["hnsw_recall@10"] = float(np.mean([len(set(h) & set(f)) / 10
                                                   for h, f in zip(found["HNSW"], found["FLAT"], strict=True)]))
            out["flat_recall@10_vs_numpy"] = float(np.mean([len(set(h) & set(e)) / 10
                                                            for h, e in zip(found["FLAT"], exact, strict=True)]))
            out["ef"] = store.ef
        finally:
            store.close()
            server.stop()
    return out


WORKERS = {"generate": worker_generate, "load": worker_load, "steps": worker_steps, "useful": worker_useful,
           "serve": worker_serve}


# ---- orchestration -------------------------------------------------------------------------------------

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
    phases["steps_sampled"] = run_worker("steps", {**common, "negatives": args.negatives, "steps": args.steps},
                                         args.phase_timeout)
    estimate_gb = _full_softmax_gb(phases, n_items)
    if args.full_steps and estimate_gb is not None and estimate_gb > args.full_softmax_max_gb:
        phases["steps_full"] = {"error": f"skipped: logits alone would take about {estimate_gb:.1f} GB "
                                         f"(> --full-softmax-max-gb {args.full_softmax_max_gb:g})"}
    elif args.full_steps:
        log(f"{n_items:,} items: {args.full_steps} steps, full softmax")
        phases["steps_full"] = run_worker("steps", {**common, "negatives": 0, "steps": args.full_steps},
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
