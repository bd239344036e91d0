"""One short GPU check (< 5 min on an H100): train on CUDA with mixed precision, against the CPU; serve the
exported encoder with ONNX Runtime's CUDA provider, against its CPU provider.

    python bench/gpu_check.py                    # writes $OUT/gpu_check.json (or --out), prints a summary

Needs a CUDA build of torch in the environment (`pip install -e '.[trainer,ranker]'` without the CPU
constraints file) and onnxruntime-gpu (a ranker dependency). Steps, each bounded by a timeout:

1. synthetic series data (bench/synthetic_data.py): --items / --interactions for the step timings, and a
   small 10k-item set for the bundle; loaded with the trainer's `load_interactions` (bench/growth.py phases);
2. training steps through the trainer's own `train_model` (bench/growth.py `steps` phase: a slice of
   --gpu-steps batches after one warm-up slice) on the GPU with SEQREC_TRAIN_PRECISION=auto (bf16 on
   Ampere and later), fp16 (autocast + GradScaler) and fp32, and --cpu-steps of the same batches on the
   CPU (CUDA hidden, all cores): steps/s and the speed-up; one more short GPU run counts the host syncs
   torch reports per step (torch.cuda.set_sync_debug_mode);
3. `seqrec train` on the GPU for a few epochs: a verified bundle (ONNX encoder exported from the GPU model);
4. `OnnxEncoder(bundle, provider="cuda")` against `provider="cpu"`: the provider really in use, outputs
   equal within tolerance, p50 latency for 1 history and for a batch of 256; the speed-up.

Exit status 0 when every check passed, 1 when one failed (the JSON says which), 2 without a usable GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import growth  # noqa: E402  (its phases run the trainer's own loop in child processes)

BUNDLE_DATA = (10_000, 200_000)  # items, interactions of the data the bundle is trained on
ENCODER_ATOL = 2e-3  # ONNX Runtime CUDA vs CPU intents (TF32/fused kernels differ in the last bits)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def preflight() -> dict[str, Any]:
    """GPU, torch and ONNX Runtime as this environment has them (in a child: this process stays torch-free,
    as the ranker is)."""
    code = ("import json, torch, onnxruntime as ort\n"
            "ok = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'cuda_available': ok,\n"
            "  'gpu': torch.cuda.get_device_name(0) if ok else None,\n"
            "  'bf16_supported': bool(ok and torch.cuda.is_bf16_supported()),\n"
            "  'onnxruntime': ort.__version__, 'ort_providers': ort.get_available_providers()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return {"cuda_available": False, "error": proc.stderr.strip()[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def encoder_latency(encoder: Any, histories: list[list[int]], batch: int, repeats: int) -> dict[str, float]:
    rows = histories[:batch]
    for _ in range(5):
        encoder.intents(rows)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.intents(rows)
        times.append(time.perf_counter() - t0)
    return growth.summarize_ms(times)


def serve_encoder(bundle_path: Path) -> dict[str, Any]:
    """The bundle's encoder under ONNX Runtime, CUDA provider against CPU provider."""
    import onnxruntime as ort

    from seqrec.services.ranker.encoder import OnnxEncoder
    from seqrec.shared.bundle import HISTORIES, Bundle

    bundle = Bundle.open(bundle_path)
    vocab = bundle.vocab()
    histories = []
    for row in bundle.iter_jsonl(HISTORIES):
        histories.append(vocab.encode(row["items"])[0][-(bundle.max_len - 1):])
        if len(histories) == 256:
            break
    out: dict[str, Any] = {"bundle": str(bundle_path), "histories": len(histories)}
    cpu = OnnxEncoder(bundle, provider="cpu")
    gpu = OnnxEncoder(bundle, provider="cuda")
    out["cuda_provider_first_try"] = gpu.provider
    if gpu.provider != "CUDAExecutionProvider" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu did not find CUDA/cuDNN libraries on the library path; the nvidia-* wheels that a
        # CUDA torch brings can be loaded explicitly (ORT >= 1.21). Recorded: serving would need the same.
        ort.preload_dlls()
        gpu = OnnxEncoder(bundle, provider="cuda")
        out["preload_dlls_needed"] = gpu.provider == "CUDAExecutionProvider"
    out["providers"] = {"cpu": cpu.provider, "cuda": gpu.provider}
    diff = float(np.abs(cpu.intents(histories) - gpu.intents(histories)).max())
    out["max_abs_diff"] = diff
    for name, enc in (("cpu", cpu), ("cuda", gpu)):
        out[name] = {"batch_1": encoder_latency(enc, histories, 1, 200),
                     "batch_256": encoder_latency(enc, histories, 256, 30)}
    out["speedup_batch_1"] = out["cpu"]["batch_1"]["p50_ms"] / out["cuda"]["batch_1"]["p50_ms"]
    out["speedup_batch_256"] = out["cpu"]["batch_256"]["p50_ms"] / out["cuda"]["batch_256"]["p50_ms"]
    return out


def train_bundle(data: Path, out_dir: Path, epochs: int, timeout: float) -> dict[str, Any]:
    """`seqrec train` as a user runs it, on the GPU (pick_device), for a few epochs."""
    cmd = [sys.executable, "-m", "seqrec.services.cli", "train", "--data", str(data), "--epochs", str(epochs),
           "--out", str(out_dir), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((Path(summary["bundle"]) / "metrics.json").read_text())
    return {"bundle": summary["bundle"], "wall_s": time.perf_counter() - t0, "device": metrics.get("device"),
            "train_seconds": metrics.get("train_seconds"), "valid_hr10": metrics["valid"].get("hr@10"),
            "test_hr10": metrics["test"].get("hr@10"), "popularity_test_hr10": metrics["popularity_test"].get("hr@10"),
            "mixed_precision_logged": "mixed-precision training" in proc.stderr}


def checks(report: dict[str, Any]) -> dict[str, bool]:
    steps = report.get("steps", {})
    auto, fp16 = steps.get("gpu_auto", {}), steps.get("gpu_fp16", {})
    serve, bundle = report.get("serve", {}), report.get("bundle", {})
    found = {
        "gpu_training_ran_on_cuda": str(auto.get("device", "")).startswith("cuda"),
        "gpu_training_mixed_precision": auto.get("precision") in ("bfloat16", "float16"),
        "fp16_gradscaler_loss_finite": fp16.get("loss") is not None and np.isfinite(fp16["loss"]),
        "gpu_faster_than_cpu": (report.get("training_speedup") or 0) > 1,
        "bundle_trained_on_cuda": str(bundle.get("device", "")).startswith("cuda"),
        "bundle_beats_popularity": (bundle.get("test_hr10") or 0) > (bundle.get("popularity_test_hr10") or 1),
        "encoder_on_cuda_provider": serve.get("providers", {}).get("cuda") == "CUDAExecutionProvider",
        "encoder_outputs_match": serve.get("max_abs_diff", 1.0) <= ENCODER_ATOL,
    }
    return {name: bool(ok) for name, ok in found.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--gpu-steps", type=int, default=200)
    p.add_argument("--cpu-steps", type=int, default=10)
    p.add_argument("--bundle-epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every phase (0: all cores)")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="exercise the script without a GPU (tiny sizes; the GPU checks fail, by design)")
    p.add_argument("--phase-timeout", type=float, default=150)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "seqrec-gpu-check")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = p.parse_args()

    started = time.perf_counter()
    report: dict[str, Any] = {"command": " ".join(sys.argv), "preflight": preflight(), "steps": {}}
    log(f"preflight: {report['preflight']}")
    if args.dry_run_cpu:
        args.items, args.interactions, args.gpu_steps, args.cpu_steps, args.bundle_epochs = 2_000, 50_000, 3, 3, 1
    elif not report["preflight"].get("cuda_available"):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print("no usable CUDA device for torch: nothing to check (see the preflight in the JSON)", file=sys.stderr)
        return 2
    args.scratch.mkdir(parents=True, exist_ok=True)
    cores = args.threads or len(os.sched_getaffinity(0))
    common = {"seed": 0, "max_len": args.max_len, "batch_size": args.batch_size, "threads": cores,
              "prepared": str(args.scratch / f"prepared-{args.items}-{args.interactions}.npz"),
              "scratch": str(args.scratch)}
    data = args.scratch / f"synth-{args.items}-{args.interactions}.parquet"
    bundle_data = (args.items, args.interactions) if args.dry_run_cpu else BUNDLE_DATA
    small = args.scratch / f"synth-{bundle_data[0]}-{bundle_data[1]}.parquet"
    for path, (items, interactions) in ((data, (args.items, args.interactions)), (small, bundle_data)):
        log(f"data: {items:,} items, {interactions:,} interactions")
        report.setdefault("data", {})[path.name] = growth.run_worker(
            "generate", {**common, "data": str(path), "items": items, "interactions": interactions,
                         "zipf": growth.GROWTH_ZIPF}, args.phase_timeout)
    report["load"] = growth.run_worker("load", {**common, "data": str(data)}, args.phase_timeout)
    if "error" not in report["load"]:
        runs = [("gpu_auto", {"SEQREC_TRAIN_PRECISION": "auto"}, args.gpu_steps, {}),
                ("cpu", {"CUDA_VISIBLE_DEVICES": ""}, args.cpu_steps, {}),
                ("gpu_fp16", {"SEQREC_TRAIN_PRECISION": "fp16"}, args.gpu_steps, {}),
                ("gpu_fp32", {"SEQREC_TRAIN_PRECISION": "fp32"}, args.gpu_steps, {}),
                ("gpu_sync_debug", {"SEQREC_TRAIN_PRECISION": "auto"}, 10, {"sync_debug": True, "warmup_epochs": 0})]
        for name, env, steps, extra in runs:
            log(f"training steps: {name} ({steps} steps of {args.batch_size})")
            report["steps"][name] = growth.run_worker(
                "steps", {**common, "negatives": 100, "steps": steps, "warmup_epochs": 1, **extra},
                args.phase_timeout, env=env)
            log(f"  {json.dumps({k: v for k, v in report['steps'][name].items() if k != 'host_syncs'})[:400]}")
        gpu_rate = report["steps"]["gpu_auto"].get("steps_per_s")
        cpu_rate = report["steps"]["cpu"].get("steps_per_s")
        report["training_speedup"] = gpu_rate / cpu_rate if gpu_rate and cpu_rate else None
    log("seqrec train on the GPU (bundle)")
    report["bundle"] = train_bundle(small, args.scratch / "bundles", args.bundle_epochs, 2 * args.phase_timeout)
    if "error" not in report["bundle"]:
        log("ONNX Runtime: CUDA provider against CPU provider")
        try:
            report["serve"] = serve_encoder(Path(report["bundle"]["bundle"]))
        except Exception as exc:  # a broken provider set-up is a finding, not a crash
            report["serve"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["checks"] = checks(report)
    report["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    steps = report["steps"]
    serve = report.get("serve", {})
    print(f"GPU {report['preflight'].get('gpu')}, torch {report['preflight'].get('torch')}, "
          f"onnxruntime {report['preflight'].get('onnxruntime')}")
    for name, run in steps.items():
        print(f"  {name:15s} " + (run.get("error") or f"{run.get('steps_per_s', 0):8.1f} steps/s  "
                                  f"{run.get('sequences_per_s', 0):10.0f} seq/s  {run.get('precision', '')}  "
                                  f"host syncs {run.get('host_syncs', '-')}"))
    print(f"  training speed-up GPU (auto precision) / CPU ({cores} cores): {report.get('training_speedup')}")
    print(f"  bundle: {report['bundle']}")
    if serve and "error" not in serve:
        print(f"  encoder p50 ms, 1 history: cpu {serve['cpu']['batch_1']['p50_ms']:.3f}, cuda "
              f"{serve['cuda']['batch_1']['p50_ms']:.3f} (x{serve['speedup_batch_1']:.1f}); 256 histories: cpu "
              f"{serve['cpu']['batch_256']['p50_ms']:.2f}, cuda {serve['cuda']['batch_256']['p50_ms']:.2f} "
              f"(x{serve['speedup_batch_256']:.1f}); max |diff| {serve['max_abs_diff']:.2e}")
    else:
        print(f"  serve: {serve}")
    print(f"  checks: {report['checks']}  ({report['wall_s']:.0f} s, report in {args.out})")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
