"""Channels to seqrec: TLS, an API key on every call, calls spread over replicas, safe retries.

A target that resolves to every replica (`dns:///gateway.seqrec.svc.cluster.local:50050` over a headless
Service, or `ipv4:10.0.0.1:50050,10.0.0.2:50050`) gets `round_robin` over all of them; seqrec's servers close
connections after a maximum age, and the channel then re-resolves the name, so replicas added later get calls
without restarting the caller. Calls that failed with UNAVAILABLE before any server handled them are retried
by gRPC itself (a few attempts with backoff) for the read-only queries and for IngestEvents, which is safe to
repeat because every event carries an id (`seqrec.client.interaction` sets one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

API_KEY_METADATA = "x-api-key"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # what seqrec's servers accept; a batch of events fits well inside
_RETRIED_METHODS = [
    {"service": "seqrec.proto.v1.RecommendService"},
    *({"service": "seqrec.proto.v1.RankerService", "method": m} for m in (
        "ItemToItem", "UserToItem", "Contextual", "Sequential", "GapFill", "IngestEvents", "GetHistory",
        "GetModelInfo")),
]
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": _RETRIED_METHODS,
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),  # gRPC's default of 30 s delays new replicas
]


@dataclass(frozen=True)
class Tls:
    """TLS to the server: the CA that signed its certificate (None: the system's roots), a client certificate
    and key for mutual TLS, and a server name when the certificate names a host other than the target's."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("Tls: give both certificate_chain and private_key for mutual TLS, or neither")

    @classmethod
    def from_files(cls, ca: str | Path | None = None, cert: str | Path | None = None,
                   key: str | Path | None = None, server_name: str | None = None) -> Tls:
        """TLS settings read from PEM files."""
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the API key) to every call; on plaintext channels too, where gRPC refuses call
    credentials (a gateway on loopback or behind a TLS-terminating proxy still checks the key)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata = tuple(metadata)

    def _with_metadata(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *self.metadata),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        return continuation(self._with_metadata(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return continuation(self._with_metadata(client_call_details), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def open_channel(target: str, *, tls: Tls | None = None, api_key: str | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to `target` (plaintext unless `tls` is given) that sends `api_key` on every call."""
    merged = dict(CHANNEL_OPTIONS)
    merged.update(options)
    if tls is not None and tls.server_name:
        merged["grpc.ssl_target_name_override"] = tls.server_name
    channel = (grpc.secure_channel(target, tls.credentials(), options=list(merged.items())) if tls is not None
               else grpc.insecure_channel(target, options=list(merged.items())))
    if api_key:
        channel = grpc.intercept_channel(channel, _MetadataInterceptor([(API_KEY_METADATA, api_key)]))
    return channel
