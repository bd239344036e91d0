"""gRPC servicer of the trainer: training jobs and the bundle root (publish, rollback), over
`messages`' mapping between protobuf and seqrec."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from seqrec.proto.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from seqrec.services.trainer.jobs import JobManager, JobNotFound
from seqrec.services.trainer.messages import (
    InvalidRequest,
    event_message,
    flatten_metrics,
    job_message,
    request_to_config,
    timestamp,
)
from seqrec.shared.bundle import MANIFEST, Bundle, BundleError

log = logging.getLogger(__name__)
LIVE_FILE = "LIVE"  # as in seqrec.services.ranker.publish (not imported: the trainer runs without the ranker extra)
STREAM_POLL_S = 1.0  # a progress stream re-checks that its client is still there at least this often



class BundleNotFound(LookupError):
    """No bundle with this version in the bundle root."""


class NotPossible(RuntimeError):
    """The call is valid but the state does not allow it (e.g. nothing to roll back to)."""


class StoreUnavailable(RuntimeError):
    """Redis or Milvus could not be reached while publishing."""


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
