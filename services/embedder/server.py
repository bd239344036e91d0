"""The embedder process: MiniLM behind gRPC, bounded batches and texts, truthful health, graceful stop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import numpy as np

from seqrec.proto.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from seqrec.services.embedder.minilm import MiniLM
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
from seqrec.shared.service_metrics import MetricsInterceptor, ServiceMetrics, methods_of
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import TlsSettings, add_port

log = logging.getLogger(__name__)
SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name
HEALTH_TEXT = "health check"


class InvalidTexts(ValueError):
    """A batch the embedder refuses (maps to INVALID_ARGUMENT); the message names the text."""


ERRORS = ErrorMapping([(InvalidTexts, grpc.StatusCode.INVALID_ARGUMENT)])


@dataclass(frozen=True)
class EmbedderSettings:
    address: str  # host:port to listen on
    max_batch: int  # texts per Embed call
    max_text_chars: int  # characters per text (the model reads its first 256 tokens anyway)
    device: str  # auto, cpu or cuda
    threads: int  # torch intra-op threads (0 = torch's default)
    workers: int  # RPC worker threads
    max_concurrent_rpcs: int
    reflection: bool
    health_interval_s: float
    grace_s: float
    max_connection_age_s: float = 0.0  # clients reconnect (and re-resolve) after this; 0 = never
    metrics_address: str = ""  # host:port of the Prometheus /metrics endpoint ("" = none)
    tls: TlsSettings = TlsSettings()  # SEQREC_TLS_CERT/KEY/CLIENT_CA: TLS or mTLS on its port (shared/tls.py)

    @classmethod
    def from_env(cls, env: Env | None = None) -> EmbedderSettings:
        env = env or Env()
        tls = TlsSettings.from_env(env)
        return cls(
            address=grpc_listen_address(env, "SEQREC_EMBEDDER_ADDRESS", "127.0.0.1:50052", tls),
            max_batch=env.int("SEQREC_EMBEDDER_MAX_BATCH", 256, minimum=1, maximum=100_000),
            max_text_chars=env.int("SEQREC_EMBEDDER_MAX_TEXT_CHARS", 20_000, minimum=1),
            device=env.choice("SEQREC_EMBEDDER_DEVICE", "auto", ("auto", "cpu", "cuda")),
            threads=env.int("SEQREC_EMBEDDER_THREADS", 0, minimum=0, maximum=256),
            workers=env.int("SEQREC_GRPC_WORKERS", 8, minimum=1, maximum=1024),
            max_concurrent_rpcs=env.int("SEQREC_MAX_CONCURRENT_RPCS", 256, minimum=1),
            reflection=env.bool("SEQREC_GRPC_REFLECTION", False),
            health_interval_s=env.float("SEQREC_HEALTH_INTERVAL_S", 10.0, minimum=0.1),
            grace_s=env.float("SEQREC_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            max_connection_age_s=env.float("SEQREC_MAX_CONNECTION_AGE_S", DEFAULT_MAX_CONNECTION_AGE_S, minimum=0.0),
            metrics_address=env.optional_address("SEQREC_METRICS_ADDRESS"),
            tls=tls,
        )


def check_texts(texts: list[str], max_batch: int, max_chars: int) -> None:
    """Refuse empty batches, too many texts, blank or oversized texts, naming the first offender."""
    if not texts:
        raise InvalidTexts("texts: at least one text is required")
    if len(texts) > max_batch:
        raise InvalidTexts(f"texts: {len(texts)} texts in one call; at most {max_batch} (split the batch)")
    for n, text in enumerate(texts):
        if not text.strip():
            raise InvalidTexts(f"texts[{n}]: empty or blank text")
        if len(text) > max_chars:
            raise InvalidTexts(f"texts[{n}]: {len(text)} characters; at most {max_chars}")
        if "\x00" in text:
            raise InvalidTexts(f"texts[{n}]: contains a NUL character")


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, model: MiniLM, settings: EmbedderSettings):
        self.model = model
        self.settings = settings

    def Embed(self, request: embedder_pb2.EmbedRequest, context: grpc.ServicerContext) -> embedder_pb2.EmbedResponse:
        texts = list(request.texts)
        check_texts(texts, self.settings.max_batch, self.settings.max_text_chars)
        vectors = self.model.embed(texts, normalize=request.normalize)
        return embedder_pb2.EmbedResponse(
            dim=vectors.shape[1], model_name=self.model.model_name,
            embeddings=[embedder_pb2.Embedding(values=row) for row in vectors.tolist()])

    def GetModelInfo(self, request: common_pb2.GetModelInfoRequest,
                     context: grpc.ServicerContext) -> embedder_pb2.EmbedderModelInfo:
        return embedder_pb2.EmbedderModelInfo(
            model_name=self.model.model_name, dim=self.model.dim, max_seq_length=self.model.max_seq_length,
            device=self.model.device, max_batch_size=self.settings.max_batch)


class EmbedderApp:
    """A running embedder: the model loaded once, the gRPC server, health from a real embedding."""

    def __init__(self, settings: EmbedderSettings, model: MiniLM | None = None):
        self.settings = settings
        self.model = model or MiniLM(settings.device, settings.threads)
        self.metrics = ServiceMetrics("embedder", methods_of(embedder_pb2, "EmbedderService"))
        self.server = make_server(settings.workers, settings.max_concurrent_rpcs,
                                  [MetricsInterceptor(self.metrics), ErrorInterceptor(ERRORS)],
                                  settings.max_connection_age_s)
        embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(EmbedderServicer(self.model, settings), self.server)
        self.health = HealthReporter(self.server, [SERVICE_NAME], self.probe, settings.health_interval_s)
        if settings.reflection:
            enable_reflection(self.server, [SERVICE_NAME])
        self.port = add_port(self.server, settings.address, settings.tls)

    def probe(self) -> tuple[bool, str]:
        """SERVING only while the model still produces a finite unit vector."""
        vector = self.model.embed([HEALTH_TEXT])[0]
        if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
            return False, "model output is not a finite unit vector"
        return True, "ok"

    def start(self) -> None:
        self.server.start()
        self.health.start()
        self.metrics.serve(self.settings.metrics_address)
        log.info("embedder listening", extra={"port": self.port, "device": self.model.device,
                                              "tls": self.settings.tls.describe(),
                                              "max_batch": self.settings.max_batch})

    def drain(self) -> None:
        """Report NOT_SERVING before the server drains."""
        self.health.shutdown()

    def stop(self, grace: float | None = None) -> None:
        self.drain()
        self.server.stop(self.settings.grace_s if grace is None else grace).wait()
        self.metrics.stop_serving()


def main() -> int:
    return run_service("embedder", lambda: EmbedderApp(EmbedderSettings.from_env()), (SettingsError, RuntimeError))
