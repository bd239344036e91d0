"""The ranker process: settings from the environment, bundle verification, stores, gRPC server, health."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.embedder.client import EmbedderClient, EmbedderRejected, EmbedderUnavailable
from seqrec.services.ranker.attribution import DEFAULT_TTL_S as DEFAULT_RECOMMENDATION_TTL_S
from seqrec.services.ranker.attribution import ServedLists
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.event_ingest import DEFAULT_ID_RETENTION_S
from seqrec.services.ranker.filters import FilterError
from seqrec.services.ranker.history_store import HistoryStoreUnavailable, RedisHistoryStore
from seqrec.services.ranker.metrics import RankerMetrics
from seqrec.services.ranker.online_items import InvalidItem
from seqrec.services.ranker.publish import I2I_SUFFIX
from seqrec.services.ranker.recommender import (
    DEFAULT_FUTURE_TOLERANCE_S,
    InvalidQuery,
    NotSupported,
    Recommender,
    UnknownItem,
)
from seqrec.services.ranker.service import RankerServicer
from seqrec.services.ranker.vector_store import MilvusItemStore, VectorStoreError, VectorStoreUnavailable
from seqrec.shared.bundle import MANIFEST, Bundle, BundleError
from seqrec.shared.deadlines import call_deadline
from seqrec.shared.exposure import grpc_listen_address
from seqrec.shared.grpc_server import (
    DEFAULT_MAX_CONNECTION_AGE_S,
    ErrorInterceptor,
    ErrorMapping,
    HealthReporter,
    enable_reflection,
    make_server,
    run_service,
)
from seqrec.shared.json_api import RequestError
from seqrec.shared.registry import BundleRegistry, resolve_bundle
from seqrec.shared.service_metrics import MetricsInterceptor
from seqrec.shared.settings import Env
from seqrec.shared.tls import TlsSettings, add_port

log = logging.getLogger(__name__)
SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].full_name

ERRORS = ErrorMapping([
    (InvalidQuery, grpc.StatusCode.INVALID_ARGUMENT),
    (FilterError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidItem, grpc.StatusCode.INVALID_ARGUMENT),
    (EmbedderRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (EmbedderUnavailable, grpc.StatusCode.UNAVAILABLE),
    (UnknownItem, grpc.StatusCode.NOT_FOUND),
    (NotSupported, grpc.StatusCode.FAILED_PRECONDITION),
    (HistoryStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (VectorStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (VectorStoreError, grpc.StatusCode.UNAVAILABLE),
])


class WatchRetry(RuntimeError):
    """Following LIVE hit a store outage: the watcher tries again later."""


WATCH_BACKOFF_MAX_S = 60.0
PROBE_TIMEOUT_S = 3.0  # all of one health probe's Milvus calls together (Redis' ping has its socket timeout)


@dataclass(frozen=True)
class RankerSettings:
    bundle: Path  # a bundle directory, or a bundle root whose LIVE file names the published version
    address: str  # host:port to listen on
    redis_url: str
    milvus_uri: str
    milvus_token: str
    embedder: str  # host:port of the embedder service ("" = none: no text queries, no UpsertItems)
    workers: int  # RPC worker threads
    max_concurrent_rpcs: int  # beyond this, calls are refused with RESOURCE_EXHAUSTED
    reflection: bool  # expose gRPC server reflection
    health_interval_s: float
    ort_threads: int  # ONNX Runtime intra-op threads (0 = its default)
    ort_provider: str  # auto (CUDA when a GPU is present), cuda or cpu
    history_cap: int  # events kept per user in Redis
    event_id_retention_s: float  # how long a repeated event id is recognised as a duplicate
    future_tolerance_s: float  # how far in the future an event's timestamp may be (clock skew)
    grace_s: float  # shutdown grace for in-flight calls
    reload_interval_s: float  # how often a bundle root's LIVE file is checked for a newly published version
    max_connection_age_s: float = 0.0  # clients reconnect (and re-resolve) after this; 0 = never
    instance: str = ""  # this process's name in GetModelInfo (default: the host name)
    metrics_address: str = ""  # host:port of the Prometheus /metrics endpoint ("" = none)
    recommendation_ttl_s: float = DEFAULT_RECOMMENDATION_TTL_S  # served lists kept for attribution; 0 = none
    tls: TlsSettings = TlsSettings()  # SEQREC_TLS_*: TLS/mTLS on its port and to the embedder (shared/tls.py)

    @classmethod
    def from_env(cls, env: Env | None = None) -> RankerSettings:
        env = env or Env()
        tls = TlsSettings.from_env(env)
        return cls(
            bundle=Path(env.str("SEQREC_BUNDLE")),
            address=grpc_listen_address(env, "SEQREC_RANKER_ADDRESS", "127.0.0.1:50051", tls),
            redis_url=env.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            milvus_uri=env.str("MILVUS_URI", "http://127.0.0.1:19530"),
            milvus_token=env.str("MILVUS_TOKEN", ""),
            embedder=env.optional_address("SEQREC_EMBEDDER"),
            workers=env.int("SEQREC_GRPC_WORKERS", 16, minimum=1, maximum=1024),
            max_concurrent_rpcs=env.int("SEQREC_MAX_CONCURRENT_RPCS", 512, minimum=1),
            reflection=env.bool("SEQREC_GRPC_REFLECTION", False),
            health_interval_s=env.float("SEQREC_HEALTH_INTERVAL_S", 2.0, minimum=0.1),
            ort_threads=env.int("SEQREC_ORT_THREADS", 0, minimum=0, maximum=256),
            ort_provider=env.choice("SEQREC_ORT_PROVIDER", "auto", ("auto", "cuda", "cpu")),
            history_cap=env.int("SEQREC_HISTORY_CAP", 1000, minimum=1),
            event_id_retention_s=env.float("SEQREC_EVENT_ID_RETENTION_S", DEFAULT_ID_RETENTION_S, minimum=1.0),
            future_tolerance_s=env.float("SEQREC_EVENT_FUTURE_TOLERANCE_S", DEFAULT_FUTURE_TOLERANCE_S, minimum=0.0),
            grace_s=env.float("SEQREC_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            reload_interval_s=env.float("SEQREC_RELOAD_INTERVAL_S", 2.0, minimum=0.1),
            max_connection_age_s=env.float("SEQREC_MAX_CONNECTION_AGE_S", DEFAULT_MAX_CONNECTION_AGE_S, minimum=0.0),
            instance=env.str("SEQREC_INSTANCE", "") or socket.gethostname(),
            metrics_address=env.optional_address("SEQREC_METRICS_ADDRESS"),
            recommendation_ttl_s=env.float("SEQREC_RECOMMENDATION_TTL_S", DEFAULT_RECOMMENDATION_TTL_S, minimum=0.0),
            tls=tls,
        )


class RankerApp:
    """A running ranker: one verified bundle, its stores, the gRPC server and its health.

    Given a bundle root, it follows the root's LIVE file: a newly published (or rolled-back)
    version is verified and loaded beside the current one, then swapped in with one assignment,
    so calls in flight finish on the old version and no call is dropped.
    """

    def __init__(self, settings: RankerSettings):
        self.settings = settings
        self.items = MilvusItemStore(settings.milvus_uri, settings.milvus_token)
        self.histories = RedisHistoryStore(settings.redis_url, cap=settings.history_cap,
                                           id_retention_s=settings.event_id_retention_s)
        self.embedder = EmbedderClient(settings.embedder, timeout=5.0, tls=settings.tls) if settings.embedder else None
        self.refused: dict[str, str] = {}  # bundle versions that failed to load, and why: never tried again
        self.watch_problem = ""  # the watcher's latest failure, "" once it succeeds
        self.metrics = RankerMetrics()
        self.recommender = self._load_at_start(Path(settings.bundle))
        self.metrics.serving(self.bundle.version, self.bundle.manifest.created_at)
        self.server = make_server(settings.workers, settings.max_concurrent_rpcs,
                                  [MetricsInterceptor(self.metrics), ErrorInterceptor(ERRORS)],
                                  settings.max_connection_age_s)
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(
            RankerServicer(lambda: self.recommender, self.model_info, self.metrics,
                           ServedLists(self.histories, settings.recommendation_ttl_s, self.metrics)), self.server)
        self.health = HealthReporter(self.server, [SERVICE_NAME], self.probe, settings.health_interval_s)
        if settings.reflection:
            enable_reflection(self.server, [SERVICE_NAME])
        self.port = add_port(self.server, settings.address, settings.tls)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._follow_live, name="bundle-watch", daemon=True)

    @property
    def bundle(self) -> Bundle:
        return self.recommender.bundle

    def _load_at_start(self, root: Path) -> Recommender:
        """The LIVE bundle; when it cannot be loaded, the newest earlier publication that can (the registry's
        history), so a bad publish does not stop new pods from starting. A bundle directory is loaded as is."""
        live = resolve_bundle(root)
        try:
            return self._load(live)
        except (BundleError, OSError, ValueError) as exc:
            if (root / MANIFEST).is_file():
                raise
            self._refuse(live.name, exc)
            log.error("the live bundle %s cannot be loaded: %s", live.name, exc)
            for version in reversed(BundleRegistry(root).history()):
                if version in self.refused:
                    continue
                try:
                    recommender = self._load(root / version)
                except (BundleError, OSError, ValueError) as older:
                    self._refuse(version, older)
                    continue
                log.warning("serving the last good version %s instead of the live %s", version, live.name)
                return recommender
            raise

    def _refuse(self, version: str, exc: BaseException) -> None:
        """Remember that `version` cannot be served, and why (health reports it; it is not tried again)."""
        self.refused[version] = f"{type(exc).__name__}: {exc}"

    def _load(self, path: Path) -> Recommender:
        bundle = Bundle.open(path)  # verifies every checksum
        encoder = OnnxEncoder(bundle, self.settings.ort_threads, self.settings.ort_provider)
        return Recommender(bundle, encoder, self.items, self.histories, self.embedder, self.settings.future_tolerance_s,
                           self.metrics)

    def reload_if_changed(self) -> bool:
        """Swap to the version the LIVE file names, once it is verified and its collections exist.

        A version that fails verification or loading is remembered and not tried again (its reason is in
        the logs and the health reason); WatchRetry when Milvus cannot answer, which the watcher retries
        with backoff."""
        try:
            path = resolve_bundle(self.settings.bundle)
        except BundleError as exc:
            self._watch_problem(f"cannot resolve the live bundle: {exc}")
            return False
        version = path.name
        if version == self.bundle.version or version in self.refused:
            return False
        try:
            ready = all(self.items.has_version(name) for name in (version, version + I2I_SUFFIX))
        except (VectorStoreError, VectorStoreUnavailable) as exc:
            raise WatchRetry(f"cannot check milvus for bundle {version}: {exc}") from exc
        if not ready:
            log.warning("live version not in milvus yet; keeping the current one",
                        extra={"bundle": version, "serving": self.bundle.version})
            return False
        try:
            fresh = self._load(path)
        except Exception as exc:  # noqa: BLE001 - any failure of one bundle must leave the served one in place
            self._refuse(version, exc)
            log.error("refusing to switch to bundle %s (not tried again): %s", version, exc,
                      extra={"bundle": version, "serving": self.bundle.version})
            self.health.check_now()
            return False
        previous, self.recommender = self.bundle.version, fresh
        self.metrics.serving(fresh.version, fresh.bundle.manifest.created_at)
        self.watch_problem = ""
        log.info("bundle swapped", extra={"bundle": version, "previous": previous})
        self.health.check_now()
        return True

    def _watch_problem(self, problem: str) -> None:
        if problem != self.watch_problem:
            log.warning(problem)
        self.watch_problem = problem

    def _follow_live(self) -> None:
        """Poll LIVE; on any error keep serving, say so, and retry with exponential backoff (up to a minute)."""
        wait = self.settings.reload_interval_s
        while not self._stop.wait(wait):
            try:
                self.reload_if_changed()
                wait = self.settings.reload_interval_s
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive every error
                wait = min(wait * 2, WATCH_BACKOFF_MAX_S)
                self._watch_problem(f"following LIVE failed, next try in {wait:.0f} s: {exc}")

    def probe(self) -> tuple[bool, str]:
        """SERVING only when Redis answers and the bundle's collections are in Milvus; the reason also says when
        the version LIVE names is not the one served (refused, or the watcher failing). Every Milvus call of a
        probe shares PROBE_TIMEOUT_S, so a hung Milvus turns health NOT_SERVING within seconds."""
        with call_deadline(PROBE_TIMEOUT_S):
            return self._probe()

    def _probe(self) -> tuple[bool, str]:
        if not self.histories.ping():
            return False, "redis unreachable"
        version = self.bundle.version
        for name in (version, version + I2I_SUFFIX):
            if not self.items.ensure_loaded(name):
                return False, f"milvus collection for {name} missing or unreachable (run seqrec publish)"
        notes = [f"refused bundle {v}: {why}" for v, why in self.refused.items()]
        notes += [self.watch_problem] if self.watch_problem else []
        return True, "; ".join(["ok", *notes])

    def model_info(self) -> common_pb2.ModelInfo:
        m = self.bundle.manifest
        metrics = {f"test_{k}": float(v) for k, v in (self.bundle.metrics().get("test") or {}).items()}
        return common_pb2.ModelInfo(
            bundle_version=self.bundle.version, hybrid=self.bundle.hybrid, num_items=m.n_items,
            num_users=m.n_users, max_len=m.max_len, hidden_size=m.scoring.layout.model,
            metadata_columns=list(m.metadata_schema), metrics=common_pb2.Metrics(values=metrics),
            runtime=f"onnxruntime:{self.recommender.encoder.provider}", default_top_k=self.bundle.top_k,
            example_user_ids=self.recommender.example_users(), instance=self.settings.instance)

    def start(self) -> None:
        for warning in self.histories.durability_warnings():
            log.warning("redis: %s", warning)
        self.server.start()
        self.health.start()
        self.metrics.serve(self.settings.metrics_address)
        if not (Path(self.settings.bundle) / MANIFEST).is_file():  # a bundle root: follow its LIVE file
            self._watcher.start()
        log.info("ranker listening", extra={"port": self.port, "bundle": self.bundle.version,
                                            "tls": self.settings.tls.describe(),
                                            "serving": self.health.serving, "reason": self.health.reason})

    def drain(self) -> None:
        """Stop following LIVE and report NOT_SERVING, before the server drains."""
        self._stop.set()
        self.health.shutdown()

    def stop(self, grace: float | None = None) -> None:
        self.drain()
        self.server.stop(self.settings.grace_s if grace is None else grace).wait()
        self.metrics.stop_serving()


def main() -> int:
    from seqrec.shared.settings import SettingsError

    return run_service("ranker", lambda: RankerApp(RankerSettings.from_env()),
                       (SettingsError, BundleError, FileNotFoundError))
