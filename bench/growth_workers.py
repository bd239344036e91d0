"""The growth benchmark's phases, each run in a child process of `bench/growth.py` (so its peak RSS is its own):
generate, load, steps, useful, serve. Every phase runs the trainer's or the ranker's own code."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from growth_report import USEFUL_FACTOR, USEFUL_MARGIN, VALID_SAMPLE, log


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
    from seqrec.shared.config import INT_LIMITS, build_hparams

    torch.manual_seed(a["seed"])
    cached = np.load(a["prepared"])
    n_items = int(cached["n_items"])
    sequences = np.split(cached["items"].astype(np.int64), np.cumsum(cached["lengths"])[:-1])
    split = leave_one_out(sequences)
    del sequences, cached
    hp = build_hparams(max_len=a["max_len"], batch_size=a["batch_size"], negative_samples=negatives,
                       epochs=epochs, eval_every=eval_every, patience=INT_LIMITS["patience"])  # never stops early
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
    sparse = bool(a.get("sparse_items", True)) and a["negatives"] > 0
    params = sum(p.numel() for p in model.parameters())
    table_params = sum(p.numel() for p in model.item_tables()) if sparse else 0
    # weights and 2 AdamW moments for every parameter; dense gradients only where a table is not row-sparse
    state_bytes = 12 * params + 4 * (params - table_params)
    before = proc_status().get("VmRSS")
    marks["reset"] = reset_peak_rss()
    device = trainer.pick_device()
    syncs: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        if a.get("sync_debug") and device.type == "cuda":
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        result = trainer.train_model(model, split, hp, n_items, counts, a["seed"], progress=False, limits=limits,
                                     sparse_items=sparse)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            syncs[f"{Path(w.filename).name}:{w.lineno}"] += 1
    last = result.history[-1]  # the last slice: no start-up costs after warm-up
    seconds = last.seconds
    out = {"mode": "sampled" if a["negatives"] else "full", "negatives": a["negatives"], "sparse_items": sparse,
           "steps": last.steps,
           "seconds": seconds, "sequences_per_s": last.sequences / seconds,
           "positions_per_s": last.positions / seconds, "steps_per_s": last.steps / seconds,
           "masked_per_step": last.masked / max(last.steps, 1),
           "params": params, "param_state_mb": state_bytes / 2 ** 20, "state_bytes_per_param": state_bytes / params,
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

