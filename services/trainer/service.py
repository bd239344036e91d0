"""gRPC servicer of the trainer: a TrainingRequest becomes a TrainConfig, jobs and bundles become protobuf.

Hyperparameters are mapped by field name: every field set in the API's `Hyperparameters` message is
passed to `build_hparams` under its own name (enum values by their lower-case suffix, e.g.
SEQUENCE_SAMPLING_LAST → "last"); only `seed` goes to `TrainConfig.seed`. A field added to both
the proto and `shared/config.py` therefore needs no change here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from seqrec.proto.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from seqrec.services.trainer.jobs import Job, JobEvent, JobManager, JobNotFound
from seqrec.shared.bundle import MANIFEST, Bundle, BundleError
from seqrec.shared.config import (
    ConfigError,
    DataConfig,
    Hyperparameters,
    TrainConfig,
    build_hparams,
    validate_data_config,
)

log = logging.getLogger(__name__)
LIVE_FILE = "LIVE"  # as in seqrec.services.ranker.publish (not imported: the trainer runs without the ranker extra)
SEED_FIELD = "seed"  # the one Hyperparameters field that is not a config.Hyperparameters field
MAX_SEED = 2**32  # numpy's seed range
STREAM_POLL_S = 1.0  # a progress stream re-checks that its client is still there at least this often

# Names in shared/config.py → names in the API, so every error names the field the client sent.
API_NAMES = {"data": "data_uri", "items": "items_uri", "user_col": "user_column", "item_col": "item_column",
             "time_col": "timestamp_column", "meta_cols": "metadata_columns", "name_col": "display_name_column"}
HP_FIELDS = frozenset(f.name for f in dataclasses.fields(Hyperparameters))


class InvalidRequest(ValueError):
    """A training payload or call that cannot be used; the message starts with the field name."""


class BundleNotFound(LookupError):
    """No bundle with this version in the bundle root."""


class NotPossible(RuntimeError):
    """The call is valid but the state does not allow it (e.g. nothing to roll back to)."""


class StoreUnavailable(RuntimeError):
    """Redis or Milvus could not be reached while publishing."""


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
    path = Path(text)
    if not path.is_absolute():
        path = (data_root if data_root is not None else Path.cwd()) / path
    path = path.resolve()
    if data_root is not None and not path.is_relative_to(data_root.resolve()):
        raise InvalidRequest(f"{field}: {value.strip()!r} is outside the data root {data_root} (SEQREC_DATA_ROOT)")
    if path.is_dir():
        raise InvalidRequest(f"{field}: {path} is a directory; give a CSV, TSV or Parquet file")
    if not path.is_file():
        raise InvalidRequest(f"{field}: file not found: {path}")
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
            time_col=columns["timestamp_column"], meta_cols=tuple(meta),
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


# -- bundles ----------------------------------------------------------------------------------------

class BundleStore:
    """The bundle root: listing, and publishing / rolling back through seqrec.services.ranker.publish."""

    def __init__(self, root: Path, redis_url: str, milvus_uri: str, milvus_token: str = ""):
        self.root = Path(root)
        self.redis_url, self.milvus_uri, self.milvus_token = redis_url, milvus_uri, milvus_token
        self._lock = threading.Lock()  # one publication at a time (published.json is read-modify-write)

    def live_version(self) -> str:
        try:
            return (self.root / LIVE_FILE).read_text().strip()
        except OSError:
            return ""

    def path_of(self, version: str) -> Path:
        version = version.strip()
        if not version:
            raise InvalidRequest("version: required")
        if version != Path(version).name or version.startswith("."):
            raise InvalidRequest(f"version: {version!r} is not a bundle version")
        path = self.root / version
        if not (path / MANIFEST).is_file():
            raise BundleNotFound(f"version: no bundle {version!r} in {self.root}")
        return path

    def versions(self) -> list[Bundle]:
        """Every readable bundle, newest first (manifests only: checksums are verified when publishing)."""
        bundles = []
        for path in self.root.iterdir() if self.root.is_dir() else ():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            try:
                bundles.append(Bundle.open(path, verify=False))
            except BundleError as exc:
                log.warning("skipping unreadable bundle", extra={"path": str(path), "error": str(exc)})
        return sorted(bundles, key=lambda b: (b.manifest.created_at, b.version), reverse=True)

    def info(self, bundle: Bundle, live: str, job_id: str = "") -> trainer_pb2.BundleInfo:
        m = bundle.manifest
        try:
            metrics = flatten_metrics(json.loads((bundle.path / "metrics.json").read_text()))
        except (OSError, ValueError):
            metrics = {}
        created = _created_at(m.created_at, bundle.path)
        text_model = m.text.model if m.text is not None else ""
        model = common_pb2.ModelInfo(
            bundle_version=bundle.version, created_at=created, hybrid=m.hybrid, num_items=m.n_items,
            num_users=m.n_users, max_len=m.max_len, hidden_size=m.scoring.layout.model,
            metadata_columns=list(m.metadata_schema), text_model=text_model,
            metrics=common_pb2.Metrics(values=metrics), default_top_k=m.top_k)
        return trainer_pb2.BundleInfo(version=bundle.version, path=str(bundle.path), created_at=created,
                                      metrics=common_pb2.Metrics(values=metrics), live=bundle.version == live,
                                      job_id=job_id, model=model)

    def publish(self, path: Path) -> Bundle:
        """Load the bundle into Milvus and Redis and make it live (idempotent)."""
        from seqrec.services.ranker.publish import publish

        with self._lock, _store_errors(f"publishing {path.name}"):
            return publish(path, self.redis_url, self.milvus_uri, self.milvus_token, progress=False)

    def rollback(self, version: str = "") -> str:
        """Make `version` (default: the one published before the live one) live again; returns it."""
        from seqrec.services.ranker.publish import rollback

        if version.strip():
            path = self.path_of(version)
            if path.name != self.live_version():
                self.publish(path)  # idempotent: reuses its Milvus collections, merges histories
            return path.name
        with self._lock, _store_errors("rolling back"):
            try:
                return rollback(self.root, self.milvus_uri, self.milvus_token)
            except BundleError as exc:
                raise NotPossible(str(exc)) from exc


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """The ranker stores' outage exceptions become StoreUnavailable (the ranker modules load lazily)."""
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable
    from seqrec.services.ranker.vector_store import VectorStoreError, VectorStoreUnavailable

    try:
        yield
    except (HistoryStoreUnavailable, VectorStoreUnavailable, VectorStoreError) as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


def _created_at(created_at: str, path: Path) -> Timestamp:
    try:
        when = dt.datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return timestamp(when.timestamp())
    except ValueError:
        return timestamp(path.stat().st_mtime)


# -- the servicer -----------------------------------------------------------------------------------

class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, jobs: JobManager, bundles: BundleStore, data_root: Path | None = None):
        self.jobs = jobs
        self.bundles = bundles
        self.data_root = data_root

    def StartTraining(self, request: trainer_pb2.TrainingRequest, context: grpc.ServicerContext):
        cfg, resolved = request_to_config(request, self.data_root)
        payload = json_format.MessageToDict(resolved, preserving_proto_field_name=True)
        job = self.jobs.submit(cfg, payload, publish=request.publish_on_success, description=request.description)
        return job_message(job)

    def StreamProgress(self, request: trainer_pb2.JobRef, context: grpc.ServicerContext
                       ) -> Iterator[trainer_pb2.TrainingEvent]:
        # Streaming calls bypass the error interceptor: statuses are set here.
        job_id = request.job_id.strip()
        if not job_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: required")
        try:
            self.jobs.get(job_id)
        except JobNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        context.add_callback(self.jobs.wake)  # a client that goes away wakes the wait below
        sent = 0
        while context.is_active():
            events, ended = self.jobs.wait_events(job_id, sent, STREAM_POLL_S)
            for event in events:
                yield event_message(job_id, event)
            sent += len(events)
            if ended:
                return

    def GetJob(self, request: trainer_pb2.JobRef, context: grpc.ServicerContext):
        return job_message(self.jobs.get(_job_id(request)))

    def ListJobs(self, request: trainer_pb2.ListJobsRequest, context: grpc.ServicerContext):
        if request.limit < 0:
            raise InvalidRequest(f"limit: must be >= 0 (0 = all), got {request.limit}")
        return trainer_pb2.ListJobsResponse(jobs=[job_message(j) for j in self.jobs.list(request.limit)])

    def CancelJob(self, request: trainer_pb2.JobRef, context: grpc.ServicerContext):
        return job_message(self.jobs.cancel(_job_id(request)))

    def ListBundles(self, request: trainer_pb2.ListBundlesRequest, context: grpc.ServicerContext):
        if request.limit < 0:
            raise InvalidRequest(f"limit: must be >= 0 (0 = all), got {request.limit}")
        live, jobs = self.bundles.live_version(), self.jobs.bundle_jobs()
        bundles = self.bundles.versions()
        if request.limit > 0:
            bundles = bundles[:request.limit]
        return trainer_pb2.ListBundlesResponse(
            bundles=[self.bundles.info(b, live, jobs.get(b.version, "")) for b in bundles], live_version=live)

    def PublishBundle(self, request: trainer_pb2.PublishBundleRequest, context: grpc.ServicerContext):
        bundle = self.bundles.publish(self.bundles.path_of(request.version))
        return self._info(bundle.version)

    def RollbackBundle(self, request: trainer_pb2.RollbackBundleRequest, context: grpc.ServicerContext):
        return self._info(self.bundles.rollback(request.version))

    def _info(self, version: str) -> trainer_pb2.BundleInfo:
        bundle = Bundle.open(self.bundles.path_of(version), verify=False)
        return self.bundles.info(bundle, self.bundles.live_version(), self.jobs.bundle_jobs().get(version, ""))


def _job_id(request: trainer_pb2.JobRef) -> str:
    job_id = request.job_id.strip()
    if not job_id:
        raise InvalidRequest("job_id: required")
    return job_id
