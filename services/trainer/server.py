"""The trainer process: settings from the environment, the job queue, gRPC server, health, graceful shutdown."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from seqrec.proto.v1 import trainer_pb2, trainer_pb2_grpc
from seqrec.services.ranker.quality_gate import GatePolicy, QualityGate
from seqrec.services.trainer.jobs import JobManager, JobNotFound, QueueFull, RootInUse, TrainerClosed
from seqrec.services.trainer.kube_jobs import KubernetesApi, KubernetesError, KubernetesLauncher
from seqrec.services.trainer.messages import InvalidRequest
from seqrec.services.trainer.service import BundleStore, StoreUnavailable, StreamsBusy, TrainerServicer
from seqrec.shared.bundle import BundleError
from seqrec.shared.exposure import grpc_listen_address
from seqrec.shared.grpc_server import (
    ErrorInterceptor,
    ErrorMapping,
    HealthReporter,
    enable_reflection,
    make_server,
    run_service,
)
from seqrec.shared.registry import InvalidVersion, NothingToRollBack, VersionNotFound
from seqrec.shared.service_metrics import MetricsInterceptor, ServiceMetrics, methods_of
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import TlsSettings, add_port

log = logging.getLogger(__name__)
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
EMBEDDER_ENV = "SEQREC_EMBEDDER"  # handed to each training process (hybrid text features)
DEFAULT_MAX_JOB_S = 4 * 3600.0  # a job's wall clock; the default training budget (30 min) is well inside it

ERRORS = ErrorMapping([
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidVersion, grpc.StatusCode.INVALID_ARGUMENT),
    (VersionNotFound, grpc.StatusCode.NOT_FOUND),
    (NothingToRollBack, grpc.StatusCode.FAILED_PRECONDITION),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TrainerClosed, grpc.StatusCode.UNAVAILABLE),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamsBusy, grpc.StatusCode.RESOURCE_EXHAUSTED),
])


@dataclass(frozen=True)
class TrainerSettings:
    bundle_root: Path  # bundles are written here; jobs are kept in its .jobs/ folder
    data_root: Path  # training data must lie inside it (relative paths are resolved from it)
    address: str  # host:port to listen on
    redis_url: str  # for publishing
    milvus_uri: str
    milvus_token: str
    embedder: str  # SEQREC_EMBEDDER for training processes; empty: MiniLM in the training process
    workers: int  # RPC worker threads; each open progress stream holds one
    max_concurrent_rpcs: int  # beyond this, calls are refused with RESOURCE_EXHAUSTED
    reflection: bool  # expose gRPC server reflection
    health_interval_s: float
    grace_s: float  # shutdown grace for in-flight calls
    max_queued: int  # jobs waiting at once; beyond, StartTraining gets RESOURCE_EXHAUSTED
    max_streams: int  # StreamProgress calls at once, below the worker threads so probes always get one
    max_job_s: float  # wall clock of one job (training, export); past it the job is stopped and fails
    metrics_address: str = ""  # host:port of the Prometheus /metrics endpoint ("" = none)
    gate_margin: float = 0.0  # SEQREC_GATE_MARGIN: NDCG@10 a job's bundle may lose to the live one and still go live
    gate_min_users: int = 100  # SEQREC_GATE_MIN_USERS: newest held-out interactions the gate needs to judge
    launcher: str = "process"  # SEQREC_TRAINER_LAUNCHER: process (a child process) or kubernetes (a Job per job)
    cronjob: str = "seqrec-retrain"  # SEQREC_TRAINER_CRONJOB: whose job template the Kubernetes Jobs copy
    tls: TlsSettings = TlsSettings()  # SEQREC_TLS_*: TLS/mTLS on its port; training processes inherit them

    @classmethod
    def from_env(cls, env: Env | None = None) -> TrainerSettings:
        env = env or Env()
        tls = TlsSettings.from_env(env)
        workers = env.int("SEQREC_GRPC_WORKERS", 32, minimum=2, maximum=1024)
        gate = GatePolicy.from_env(env)
        return cls(
            bundle_root=Path(env.str("SEQREC_BUNDLE_ROOT")),
            data_root=Path(env.str("SEQREC_DATA_ROOT")),  # required: jobs may read only below it
            address=grpc_listen_address(env, "SEQREC_TRAINER_ADDRESS", "127.0.0.1:50053", tls),
            redis_url=env.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            milvus_uri=env.str("MILVUS_URI", "http://127.0.0.1:19530"),
            milvus_token=env.str("MILVUS_TOKEN", ""),
            embedder=env.str(EMBEDDER_ENV, ""),
            workers=workers,
            max_concurrent_rpcs=env.int("SEQREC_MAX_CONCURRENT_RPCS", 64, minimum=1),
            reflection=env.bool("SEQREC_GRPC_REFLECTION", False),
            health_interval_s=env.float("SEQREC_HEALTH_INTERVAL_S", 5.0, minimum=0.1),
            grace_s=env.float("SEQREC_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            max_queued=env.int("SEQREC_TRAINER_MAX_QUEUED", 16, minimum=1, maximum=10_000),
            max_streams=env.int("SEQREC_TRAINER_MAX_STREAMS", max(1, workers // 2), minimum=1, maximum=1024),
            max_job_s=env.float("SEQREC_TRAINER_MAX_JOB_S", DEFAULT_MAX_JOB_S, minimum=1.0),
            metrics_address=env.optional_address("SEQREC_METRICS_ADDRESS"),
            gate_margin=gate.margin,
            gate_min_users=gate.min_users,
            launcher=_launcher(env.str("SEQREC_TRAINER_LAUNCHER", "process")),
            cronjob=env.str("SEQREC_TRAINER_CRONJOB", "seqrec-retrain"),
            tls=tls,
        )


def _kubernetes(settings: TrainerSettings) -> KubernetesLauncher | None:
    """The Kubernetes Job launcher when SEQREC_TRAINER_LAUNCHER=kubernetes (in a pod with a service account)."""
    if settings.launcher != "kubernetes":
        return None
    try:
        return KubernetesLauncher(KubernetesApi.in_cluster(), settings.cronjob, settings.data_root)
    except KubernetesError as exc:
        raise SettingsError(str(exc)) from exc


def _launcher(name: str) -> str:
    if name not in ("process", "kubernetes"):
        raise SettingsError(f"SEQREC_TRAINER_LAUNCHER: process or kubernetes, got {name!r}")
    return name


class TrainerApp:
    """A running trainer: the job queue, the bundle root, the gRPC server and its health."""

    def __init__(self, settings: TrainerSettings):
        self.settings = settings
        settings.bundle_root.mkdir(parents=True, exist_ok=True)
        if not settings.data_root.is_dir():
            raise FileNotFoundError(f"SEQREC_DATA_ROOT: {settings.data_root} is not a directory")
        self.bundles = BundleStore(settings.bundle_root, settings.redis_url, settings.milvus_uri,
                                   settings.milvus_token)
        child_env = {EMBEDDER_ENV: settings.embedder} if settings.embedder else {}
        gate = QualityGate(GatePolicy(settings.gate_margin, settings.gate_min_users))
        self.jobs = JobManager(settings.bundle_root, publisher=functools.partial(self.bundles.publish, gate=gate),
                               child_env=child_env,
                               cancel_grace_s=min(5.0, max(settings.grace_s, 1.0)), max_queued=settings.max_queued,
                               max_job_s=settings.max_job_s, launcher=_kubernetes(settings))
        if settings.max_streams >= settings.workers:
            raise SettingsError(f"SEQREC_TRAINER_MAX_STREAMS ({settings.max_streams}) must be below "
                                f"SEQREC_GRPC_WORKERS ({settings.workers}): each stream holds a worker thread")
        self.metrics = ServiceMetrics("trainer", methods_of(trainer_pb2, "TrainerService"))
        self.server = make_server(settings.workers, settings.max_concurrent_rpcs,
                                  [MetricsInterceptor(self.metrics), ErrorInterceptor(ERRORS)])
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(
            TrainerServicer(self.jobs, self.bundles, settings.data_root, settings.max_streams, settings.max_job_s),
            self.server)
        self.health = HealthReporter(self.server, [SERVICE_NAME], self.probe, settings.health_interval_s)
        if settings.reflection:
            enable_reflection(self.server, [SERVICE_NAME])
        self.port = add_port(self.server, settings.address, settings.tls)

    def probe(self) -> tuple[bool, str]:
        """SERVING while the job worker runs and the bundle root is writable."""
        if not self.jobs.alive:
            return False, "job worker stopped"
        if not os.access(self.settings.bundle_root, os.W_OK):
            return False, f"bundle root {self.settings.bundle_root} is not writable"
        return True, "ok"

    def start(self) -> None:
        self.jobs.start()
        self.server.start()
        self.health.start()
        self.metrics.serve(self.settings.metrics_address)
        log.info("trainer listening", extra={"port": self.port, "bundle_root": str(self.settings.bundle_root),
                                             "serving": self.health.serving, "reason": self.health.reason})

    def drain(self) -> None:
        """Stop taking jobs and cancel the running one (marked CANCELLED); queued jobs wait for the next start."""
        self.health.shutdown()
        self.jobs.shutdown()

    def stop(self, grace: float | None = None) -> None:
        self.drain()
        self.server.stop(self.settings.grace_s if grace is None else grace).wait()
        self.metrics.stop_serving()


def main() -> int:
    return run_service("trainer", lambda: TrainerApp(TrainerSettings.from_env()), (SettingsError, RootInUse, OSError))
