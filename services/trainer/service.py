"""gRPC servicer of the trainer: training jobs and the bundle root (publish, rollback), over
`messages`' mapping between protobuf and seqrec."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from seqrec.proto.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from seqrec.services.trainer.jobs import JobManager
from seqrec.services.trainer.messages import (
    InvalidRequest,
    event_message,
    flatten_metrics,
    job_message,
    request_to_config,
    timestamp,
)
from seqrec.shared.bundle import Bundle
from seqrec.shared.registry import BundleRegistry, Gate

log = logging.getLogger(__name__)
MAX_JOB_ID_CHARS = 128  # ids this trainer hands out are far shorter
STREAM_POLL_S = 1.0  # a progress stream re-checks that its client is still there at least this often


class StoreUnavailable(RuntimeError):
    """Redis or Milvus could not be reached while publishing."""


# -- bundles ----------------------------------------------------------------------------------------

class BundleStore:
    """The bundle root seen through the registry, with the stores the ranker serves from."""

    def __init__(self, root: Path, redis_url: str, milvus_uri: str, milvus_token: str = ""):
        self.registry = BundleRegistry(root)
        self.redis_url, self.milvus_uri, self.milvus_token = redis_url, milvus_uri, milvus_token

    def live_version(self) -> str:
        return self.registry.live_version()

    def path_of(self, version: str) -> Path:
        return self.registry.path_of(version)

    def versions(self) -> list[Bundle]:
        return self.registry.versions()

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

    def publish(self, path: Path, gate: Gate | None = None) -> str:
        """Load the bundle into Milvus and Redis and make it live (idempotent); returns its version. A job's
        bundle goes through the quality gate; PublishBundle, an operator naming a version, does not."""
        with _store_errors(f"publishing {path.name}"):
            return self.registry.publish(path, self._loader(), gate)

    def rollback(self, version: str = "") -> str:
        """Make `version` (default: the one published before the live one) live again; returns it."""
        with _store_errors("rolling back"):
            return self.registry.rollback(self._loader(), version)

    def _loader(self) -> Callable[[Path], object]:
        from seqrec.services.ranker.publish import load_stores  # the ranker extra loads lazily

        return functools.partial(load_stores, redis_url=self.redis_url, milvus_uri=self.milvus_uri,
                                 milvus_token=self.milvus_token, progress=False)


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
    def __init__(self, jobs: JobManager, bundles: BundleStore, data_root: Path | None = None, max_streams: int = 8,
                 max_job_s: float = 0.0):
        self.jobs = jobs
        self.bundles = bundles
        self.data_root = data_root
        self.max_streams = max_streams
        self.max_job_s = max_job_s
        self._streams = threading.BoundedSemaphore(max_streams)

    def StartTraining(self, request: trainer_pb2.TrainingRequest, context: grpc.ServicerContext):
        cfg, resolved = request_to_config(request, self.data_root)
        budget_s = cfg.hparams.time_budget * 60
        if self.max_job_s and not 0 < budget_s < self.max_job_s:
            # the budget covers training; export and publishing need the rest of the job's wall clock
            raise InvalidRequest(f"hyperparameters.time_budget: must be above 0 and below this trainer's cap of "
                                 f"{self.max_job_s / 60:g} minutes per job (SEQREC_TRAINER_MAX_JOB_S), got "
                                 f"{cfg.hparams.time_budget:g}")
        payload = json_format.MessageToDict(resolved, preserving_proto_field_name=True)
        job = self.jobs.submit(cfg, payload, publish=request.publish_on_success, description=request.description)
        return job_message(job)

    def StreamProgress(self, request: trainer_pb2.JobRef, context: grpc.ServicerContext
                       ) -> Iterator[trainer_pb2.TrainingEvent]:
        job_id = _job_id(request)
        self.jobs.get(job_id)  # JobNotFound before the stream starts
        # Each stream holds a worker thread while it waits: past the cap, refuse rather than starve other calls.
        if not self._streams.acquire(blocking=False):
            raise StreamsBusy(f"{self.max_streams} progress streams are open (SEQREC_TRAINER_MAX_STREAMS); poll "
                              "GetJob or retry later")
        try:
            context.add_callback(self.jobs.wake)  # a client that goes away wakes the wait below
            sent = 0
            while context.is_active():
                events, ended = self.jobs.wait_events(job_id, sent, STREAM_POLL_S)
                for event in events:
                    yield event_message(job_id, event)
                sent += len(events)
                if ended:
                    return
        finally:
            self._streams.release()

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
        return self._info(self.bundles.publish(self.bundles.path_of(request.version)))

    def RollbackBundle(self, request: trainer_pb2.RollbackBundleRequest, context: grpc.ServicerContext):
        return self._info(self.bundles.rollback(request.version))

    def _info(self, version: str) -> trainer_pb2.BundleInfo:
        bundle = Bundle.open(self.bundles.path_of(version), verify=False)
        return self.bundles.info(bundle, self.bundles.live_version(), self.jobs.bundle_jobs().get(version, ""))


class StreamsBusy(RuntimeError):
    """Every progress stream this trainer allows is open."""


def _job_id(request: trainer_pb2.JobRef) -> str:
    job_id = request.job_id.strip()
    if not job_id:
        raise InvalidRequest("job_id: required")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise InvalidRequest(f"job_id: at most {MAX_JOB_ID_CHARS} characters, got {len(job_id)}")
    return job_id
