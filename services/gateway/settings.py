"""Gateway settings from environment variables; a malformed value raises SettingsError naming it."""

from __future__ import annotations

from dataclasses import dataclass

from seqrec.shared.exposure import MUTUAL_TLS, listen_address
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import TlsSettings


@dataclass(frozen=True)
class GatewaySettings:
    http_address: str  # host:port of the HTTP JSON API
    grpc_address: str  # host:port of the gRPC front door; "" disables it
    ranker: str  # the ranker's gRPC target, host:port
    api_keys: tuple[str, ...]  # accepted API keys; empty means no authentication
    max_request_bytes: int  # larger request bodies get 413
    deadline_s: float  # deadline of each ranker call (the gRPC front door passes the caller's on)
    grace_s: float  # on SIGTERM, in-flight requests get this long to finish
    health_interval_s: float  # how often the gRPC health status re-checks the ranker
    grpc_workers: int  # gRPC front door worker threads
    max_concurrent_rpcs: int  # beyond this, gRPC calls get RESOURCE_EXHAUSTED
    tls: TlsSettings = TlsSettings()  # SEQREC_TLS_*: TLS/mTLS on the front door and to the ranker (shared/tls.py)

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        api_keys = _api_keys(env.str("SEQREC_API_KEYS", ""))
        tls = TlsSettings.from_env(env)
        grpc_address = env.environ.get("SEQREC_GATEWAY_GRPC_ADDRESS")
        if grpc_address is None or grpc_address.strip():
            grpc_address = listen_address(env, "SEQREC_GATEWAY_GRPC_ADDRESS", "127.0.0.1:50050",
                                          guarded=bool(api_keys) or tls.mutual,
                                          credentials=f"SEQREC_API_KEYS or {MUTUAL_TLS}")
        return cls(
            http_address=listen_address(env, "SEQREC_GATEWAY_ADDRESS", "127.0.0.1:8080", guarded=bool(api_keys),
                                        credentials="SEQREC_API_KEYS"),
            grpc_address=grpc_address.strip(),
            ranker=env.address("SEQREC_RANKER", "127.0.0.1:50051"),
            api_keys=api_keys,
            max_request_bytes=env.int("SEQREC_MAX_REQUEST_BYTES", 1_048_576, minimum=1024, maximum=1 << 30),
            deadline_s=_positive(env, "SEQREC_DEADLINE_S", 2.0),
            grace_s=env.float("SEQREC_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            health_interval_s=_positive(env, "SEQREC_HEALTH_INTERVAL_S", 2.0),
            grpc_workers=env.int("SEQREC_GRPC_WORKERS", 16, minimum=1, maximum=1024),
            max_concurrent_rpcs=env.int("SEQREC_MAX_CONCURRENT_RPCS", 512, minimum=1),
            tls=tls,
        )


def _positive(env: Env, name: str, default: float) -> float:
    value = env.float(name, default)
    if not value > 0:
        raise SettingsError(f"{name}: must be greater than 0, got {value}")
    return value


def _api_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        if len(key) < 8 or not key.isprintable() or " " in key:
            # the value itself is never echoed: it is a secret
            raise SettingsError("SEQREC_API_KEYS: each key needs at least 8 printable characters without spaces")
    return keys

