"""gRPC client of the embedder (no torch): what the ranker and a remote-embedding trainer use."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from seqrec.proto.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from seqrec.shared.grpc_client import CLIENT_OPTIONS
from seqrec.shared.text import TEXT_DIM
from seqrec.shared.tls import TlsSettings, open_channel
from seqrec.shared.tracing import inject_metadata


class EmbedderUnavailable(RuntimeError):
    """The embedder could not be reached or failed (maps to UNAVAILABLE)."""


class EmbedderRejected(ValueError):
    """The embedder refused the texts (maps to INVALID_ARGUMENT); the message names the text."""


class EmbedderClient:
    """`embed(texts)` over gRPC, split into the server's batch size, with a deadline per call."""

    dim = TEXT_DIM

    def __init__(self, target: str, timeout: float = 10.0, batch_size: int = 128, tls: TlsSettings | None = None):
        """`tls`: how to reach the embedder (shared/tls.py); None reads SEQREC_TLS_* from the environment."""
        self.target = target
        self.timeout = timeout
        self.batch_size = batch_size
        self.channel = open_channel(target, tls if tls is not None else TlsSettings.from_env(), CLIENT_OPTIONS)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.channel)

    def _call(self, method: str, request: object, timeout: float) -> object:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=inject_metadata())
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise EmbedderRejected(exc.details()) from exc
            raise EmbedderUnavailable(f"embedder at {self.target}: {code.name}: {exc.details()}") from exc

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 384] float32, L2-normalised, in order."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            response = self._call("Embed", embedder_pb2.EmbedRequest(texts=chunk, normalize=True), self.timeout)
            out.append(np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(len(chunk), -1))
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def model_info(self, timeout: float = 2.0) -> embedder_pb2.EmbedderModelInfo:
        return self._call("GetModelInfo", common_pb2.GetModelInfoRequest(), timeout)

    def close(self) -> None:
        self.channel.close()
