"""Protobuf ↔ seqrec for the trainer service: TrainingRequest → TrainConfig, jobs and bundles → messages.

Hyperparameters are mapped by field name: every field set in the API's `Hyperparameters` message is
passed to `build_hparams` under its own name (enum values by their lower-case suffix, e.g.
SEQUENCE_SAMPLING_LAST → "last"); only `seed` goes to `TrainConfig.seed`. A field added to both
the proto and `shared/config.py` therefore needs no change here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from seqrec.proto.v1 import common_pb2, trainer_pb2
from seqrec.services.trainer.jobs import Job, JobEvent
from seqrec.shared.config import (
    ConfigError,
    DataConfig,
    Hyperparameters,
    TrainConfig,
    build_hparams,
    validate_data_config,
)

SEED_FIELD = "seed"  # the one Hyperparameters field that is not a config.Hyperparameters field
MAX_SEED = 2**32  # numpy's seed range

# Names in shared/config.py → names in the API, so every error names the field the client sent.
API_NAMES = {"data": "data_uri", "items": "items_uri", "user_col": "user_column", "item_col": "item_column",
             "time_col": "timestamp_column", "meta_cols": "metadata_columns", "name_col": "display_name_column"}
HP_FIELDS = frozenset(f.name for f in dataclasses.fields(Hyperparameters))


class InvalidRequest(ValueError):
    """A training payload or call that cannot be used; the message starts with the field name."""


# -- requests → config ------------------------------------------------------------------------------

def _enum_prefix(fd: FieldDescriptor) -> str:
    return fd.enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")  # e.g. "SEQUENCE_SAMPLING_"


def _enum_to_text(fd: FieldDescriptor, number: int) -> str | None:
    """SEQUENCE_SAMPLING_LAST → "last"; the UNSPECIFIED value means "not given"."""
    if number == 0:
        return None
    value = fd.enum_type.values_by_number.get(number)
    if value is None:
        raise InvalidRequest(f"hyperparameters.{fd.name}: unknown value {number}")
    return value.name.removeprefix(_enum_prefix(fd)).lower()


def _text_to_enum(fd: FieldDescriptor, text: str) -> int:
    value = fd.enum_type.values_by_name.get(_enum_prefix(fd) + str(text).upper())
    return value.number if value is not None else 0


def hyperparameter_overrides(message: trainer_pb2.Hyperparameters) -> tuple[dict[str, Any], int | None]:
    """The fields the client set, by name, for `build_hparams`; and the seed (None when not set)."""
    overrides: dict[str, Any] = {}
    seed = None
    for fd in message.DESCRIPTOR.fields:
        if not message.HasField(fd.name):
            continue
        value = getattr(message, fd.name)
        if fd.enum_type is not None:
            value = _enum_to_text(fd, value)
        if fd.name == SEED_FIELD:
            seed = int(value)
        else:
            overrides[fd.name] = value
    return overrides, seed


def hyperparameters_message(hp: Hyperparameters, seed: int) -> trainer_pb2.Hyperparameters:
    """Every field filled from the resolved config (the job's "defaults resolved" payload)."""
    message = trainer_pb2.Hyperparameters()
    for fd in message.DESCRIPTOR.fields:
        if fd.name == SEED_FIELD:
            value: Any = seed
        elif hasattr(hp, fd.name):
            value = getattr(hp, fd.name)
        else:
            continue
        if fd.enum_type is not None:
            value = _text_to_enum(fd, value)
        setattr(message, fd.name, value)
    return message


def api_message(error: str) -> str:
    """A ConfigError message in the API's field names (hidden_size → hyperparameters.hidden_size, ...).

    Only the head of the message (before ":" or ", got") is rewritten, never the values quoted after it.
    """
    head, sep, rest = re.match(r"(.*?)(:|, got |$)(.*)", error, re.S).groups()
    if sep == ":" and head in HP_FIELDS:
        return f"hyperparameters.{error}"
    return re.sub(r"\b(" + "|".join(API_NAMES) + r")\b", lambda m: API_NAMES[m.group(1)], head) + sep + rest


def resolve_location(value: str, field: str, data_root: Path | None, required: bool) -> Path | None:
    """A local path or file:// URI → an existing file, inside `data_root` when one is configured."""
    text = value.strip()
    if not text:
        if required:
            raise InvalidRequest(f"{field}: required (a local path or a file:// URI of a CSV, TSV or Parquet file)")
        return None
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme.lower() != "file":
            raise InvalidRequest(f"{field}: {parsed.scheme}:// is not supported; give a local path or a file:// URI")
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRequest(f"{field}: a file URI must name a local file (file:///path), not host "
                                 f"{parsed.netloc!r}")
        text = unquote(parsed.path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):  # NUL makes the OS calls below raise ValueError
        raise InvalidRequest(f"{field}: control characters are not allowed in a path, got {value.strip()!r}")
    path = Path(text)
    if not path.is_absolute():
        path = (data_root if data_root is not None else Path.cwd()) / path
    try:
        path = path.resolve()
        if data_root is not None and not path.is_relative_to(data_root.resolve()):
            raise InvalidRequest(f"{field}: {value.strip()!r} is outside the data root {data_root} (SEQREC_DATA_ROOT)")
        if path.is_dir():
            raise InvalidRequest(f"{field}: {path} is a directory; give a CSV, TSV or Parquet file")
        if not path.is_file():
            raise InvalidRequest(f"{field}: file not found: {path}")
    except OSError as exc:  # a name too long, a loop of links: the path cannot name a readable file
        raise InvalidRequest(f"{field}: not a readable path ({exc.strerror or type(exc).__name__})") from exc
    return path


def request_to_config(request: trainer_pb2.TrainingRequest, data_root: Path | None = None
                      ) -> tuple[TrainConfig, trainer_pb2.TrainingRequest]:
    """Validate a payload synchronously; returns the config to train and the payload with defaults resolved."""
    data = resolve_location(request.data_uri, "data_uri", data_root, required=True)
    items = resolve_location(request.items_uri, "items_uri", data_root, required=False)
    columns = {}
    for name in ("user_column", "item_column", "timestamp_column"):
        columns[name] = getattr(request, name).strip()
        if not columns[name]:
            raise InvalidRequest(f"{name}: required (the name of a column in {request.data_uri.strip()})")
    meta = [c.strip() for c in request.metadata_columns]
    for i, column in enumerate(meta):
        if not column:
            raise InvalidRequest(f"metadata_columns[{i}]: empty column name")
        if column in meta[:i]:
            raise InvalidRequest(f"metadata_columns[{i}]: {column!r} is given twice")
    overrides, seed = hyperparameter_overrides(request.hyperparameters)
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise InvalidRequest(f"hyperparameters.seed: must be in [0, 2^32), got {seed}")
    unknown = sorted(set(overrides) - HP_FIELDS)
    if unknown:
        raise InvalidRequest(f"hyperparameters.{unknown[0]}: not supported by this trainer (an older seqrec?)")
    preset = request.preset.strip() or None
    try:
        data_cfg = DataConfig(
            data=str(data), user_col=columns["user_column"], item_col=columns["item_column"],
            time_col=columns["timestamp_column"], time_unit=request.timestamp_unit.strip() or "auto",
            meta_cols=tuple(meta),
            name_col=request.display_name_column.strip() or None, items=str(items) if items else None,
            min_user_interactions=request.min_user_interactions if request.HasField("min_user_interactions") else 0,
            min_item_interactions=request.min_item_interactions if request.HasField("min_item_interactions") else 0)
        validate_data_config(data_cfg)
        hp = build_hparams(preset, **overrides)
    except ConfigError as exc:
        raise InvalidRequest(api_message(str(exc))) from exc
    cfg = TrainConfig(data=data_cfg, hparams=hp, preset=preset, **({} if seed is None else {"seed": seed}))

    resolved = trainer_pb2.TrainingRequest()
    resolved.CopyFrom(request)
    resolved.data_uri, resolved.items_uri = str(data), str(items) if items else ""
    resolved.user_column, resolved.item_column = data_cfg.user_col, data_cfg.item_col
    resolved.timestamp_column, resolved.display_name_column = data_cfg.time_col, data_cfg.name_col or ""
    resolved.timestamp_unit = data_cfg.time_unit
    resolved.preset = preset or ""
    del resolved.metadata_columns[:]
    resolved.metadata_columns.extend(meta)
    resolved.min_user_interactions = data_cfg.min_user_interactions
    resolved.min_item_interactions = data_cfg.min_item_interactions
    resolved.hyperparameters.CopyFrom(hyperparameters_message(hp, cfg.seed))
    return cfg, resolved


# -- jobs → protobuf --------------------------------------------------------------------------------

JOB_STATES = {name: trainer_pb2.JobState.Value(f"JOB_STATE_{name}")
              for name in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")}

# Stable codes for the training report's plain-language warnings (matched on their wording).
WARNING_CODES = (
    ("fewer than", "few_interactions"), ("overfitting", "overfitting"), ("slow training", "slow_training"),
    ("no metadata", "cold_start_without_metadata"), ("out of memory", "out_of_memory"),
    ("low quality", "low_quality"), ("nan", "nan_loss"), ("still improving", "still_improving"),
    ("time budget", "time_budget"),
    ("share a timestamp", "timestamp_ties"), ("dropped for missing", "dropped_rows"), ("duplicate", "duplicate_rows"),
)


def warning_message(text: str) -> trainer_pb2.TrainingWarning:
    lowered = text.lower()
    code = next((c for needle, c in WARNING_CODES if needle in lowered), "training")
    observed, sep, advice = text.partition("; ")
    return trainer_pb2.TrainingWarning(code=code, message=observed if sep else text, suggestion=advice)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json → {"valid_ndcg@10": .., "test_hr@10": .., "epochs": .., ...} (numbers only, no data stats)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in ("data", "warnings"):
            continue
        if isinstance(value, dict):
            out.update({f"{key}_{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def event_message(job_id: str, event: JobEvent) -> trainer_pb2.TrainingEvent:
    return trainer_pb2.TrainingEvent(
        job_id=job_id, state=JOB_STATES[event.state], epoch=event.epoch, total_epochs=event.total_epochs,
        loss=event.loss, validation=common_pb2.Metrics(values=event.validation), message=event.message,
        warnings=[warning_message(w) for w in event.warnings], bundle_path=event.bundle_path,
        bundle_version=event.bundle_version, time=timestamp(event.time), progress=event.progress)


def job_message(job: Job) -> trainer_pb2.TrainingJob:
    request = json_format.ParseDict(job.request, trainer_pb2.TrainingRequest(), ignore_unknown_fields=True)
    message = trainer_pb2.TrainingJob(
        job_id=job.job_id, state=JOB_STATES[job.state], request=request, created_at=timestamp(job.created_at),
        metrics=common_pb2.Metrics(values=flatten_metrics(job.metrics)), bundle_version=job.bundle_version,
        bundle_path=job.bundle_path, error=job.error, warnings=[warning_message(w) for w in job.warnings])
    if job.started_at is not None:
        message.started_at.CopyFrom(timestamp(job.started_at))
    if job.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(job.finished_at))
    if job.events:
        message.last_event.CopyFrom(event_message(job.job_id, job.events[-1]))
    return message


