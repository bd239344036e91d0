"""`seqrec train`: the command-line front of the trainer pipeline.

Data-parallel on N processes (GPUs with NCCL, else CPU processes with gloo), the same command under torchrun:

    torchrun --standalone --nproc_per_node=N -m seqrec.services.cli train --data ... --out ...

--batch-size stays the global batch (each process takes batch_size / N, rounded up); rank 0 alone
writes the bundle and prints the summary line; every process exits with the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from seqrec.shared.config import (
    PRESETS,
    SAMPLING_STRATEGIES,
    TIME_UNITS,
    ConfigError,
    DataConfig,
    Hyperparameters,
    TrainConfig,
    build_hparams,
)
from seqrec.shared.logs import show_progress

log = logging.getLogger("seqrec.train")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


DATA_PARALLEL_HELP = ("Data-parallel: torchrun --standalone --nproc_per_node=N -m seqrec.services.cli train ... "
                      "trains on N processes (NCCL on GPUs, gloo on CPU); --batch-size is the global batch, "
                      "split across them; rank 0 writes the bundle and prints the summary.")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Data flags, then one flag per hyperparameter (named after the field, defaults from the spec)."""
    parser.epilog = DATA_PARALLEL_HELP
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="interactions file (.csv, .tsv or .parquet); required unless "
                                                   "--config-env names the whole payload")
    data.add_argument("--user-col", default="user_id")
    data.add_argument("--item-col", default="item_id")
    data.add_argument("--time-col", default="timestamp", help="numbers or ISO date strings")
    data.add_argument("--time-unit", choices=list(TIME_UNITS), default="auto",
                      help="unit of numeric timestamps (auto: by magnitude, e.g. 1.7e9 = s, 1.7e12 = ms)")
    data.add_argument("--meta-cols", default="", help="comma-separated item metadata columns")
    data.add_argument("--name-col", default=None, help="display-name column")
    data.add_argument("--items", default=None, help="item table joined on the item column")
    data.add_argument("--min-user-interactions", type=int, default=0, help="iterative k-core minimum per user")
    data.add_argument("--min-item-interactions", type=int, default=0, help="iterative k-core minimum per item")
    hp = parser.add_argument_group("hyperparameters (default: the spec's, or the preset's)")
    hp.add_argument("--preset", choices=sorted(PRESETS), default=None)
    for f in dataclasses.fields(Hyperparameters):
        flag = "--" + f.name.replace("_", "-")
        kind = {bool: _bool, int: int, float: float, str: str}[type(f.default)]
        extra: dict[str, Any] = {"choices": SAMPLING_STRATEGIES} if f.name == "sampling" else {}
        if kind is _bool:
            extra.update(nargs="?", const=True)
        text = f"default {f.default}"
        if f.name == "batch_size":
            text += "; sequences per optimizer step in all: under torchrun each of N processes takes 1/N"
        hp.add_argument(flag, type=kind, default=None, help=text, **extra)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config-env", default=None, metavar="VAR",
                        help="read the whole training configuration (TrainConfig JSON, as the trainer service "
                             "stores a job's) from environment variable VAR instead of the data and "
                             "hyperparameter flags: how a Kubernetes Job the trainer service submits gets it")
    parser.add_argument("--out", default="bundles", help="directory that receives the versioned bundle")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.config_env:
        raw = os.environ.get(args.config_env)
        if raw is None:
            raise ConfigError(f"--config-env: environment variable {args.config_env} is not set")
        try:
            return TrainConfig.from_dict(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"--config-env: {args.config_env} is not a training configuration ({exc})") from exc
    if not args.data:
        raise ConfigError("--data: required (or --config-env)")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Hyperparameters)}
    meta_cols = tuple(c.strip() for c in args.meta_cols.split(",") if c.strip())
    data = DataConfig(data=args.data, user_col=args.user_col, item_col=args.item_col, time_col=args.time_col,
                      time_unit=args.time_unit, meta_cols=meta_cols, name_col=args.name_col, items=args.items,
                      min_user_interactions=args.min_user_interactions,
                      min_item_interactions=args.min_item_interactions)
    return TrainConfig(data=data, hparams=build_hparams(args.preset, **overrides), seed=args.seed, preset=args.preset)


def run_train(args: argparse.Namespace) -> int:
    from seqrec.services.trainer import distributed
    from seqrec.services.trainer.data import DataError
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.services.trainer.train import TrainingError

    try:
        cfg = config_from_args(args)
        path, metrics = run_training(cfg, args.out, progress=show_progress(args.no_progress))
    except (ConfigError, DataError, TrainingError) as exc:
        where = "" if distributed.is_main() else f" [rank {distributed.rank()}]"
        message = exc.with_sample() if isinstance(exc, DataError) else str(exc)  # the user's own file
        print(f"seqrec train{where}: error: {message}", file=sys.stderr)
        return 2
    if not distributed.is_main():
        return 0  # torchrun: rank 0 reports for every rank
    for warning in metrics["warnings"]:
        log.warning(warning)  # "hh:mm:ss warning: ..." on a terminal, a JSON line elsewhere
    summary = {"bundle": str(path), "valid": metrics["valid"], "test": metrics["test"],
               "epochs": metrics["epochs"], "train_seconds": metrics["train_seconds"]}
    if sys.stdout.isatty():  # a person: the figures that matter, next to popularity; scripts get the JSON
        from seqrec.services.trainer.report import test_headline

        print(f"bundle {path}\n{test_headline(metrics)}; {metrics['epochs']} epochs in "
              f"{metrics['train_seconds']:.0f} s")
    else:
        print(json.dumps(summary))
    return 0
