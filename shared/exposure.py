"""Closed by default: a service listening beyond loopback must demand credentials, or be told explicitly not to.

Every seqrec server (the gateway's HTTP API and gRPC front door, the ranker, the embedder, the trainer)
reads its listen address through `listen_address`. On a loopback address (127.0.0.0/8, ::1, localhost)
anything goes: only this host can connect. Beyond it, the service needs its credentials (API keys for
the gateway, mutual TLS for the gRPC services), else it refuses to start naming the variable, unless
`SEQREC_ALLOW_INSECURE=true` says on purpose that the network in front of it does the guarding (a
service mesh with its own mTLS, a laptop); it then logs a warning at every start.
"""

from __future__ import annotations

import ipaddress
import logging

from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import TlsSettings

log = logging.getLogger(__name__)

INSECURE_ENV = "SEQREC_ALLOW_INSECURE"
MUTUAL_TLS = "mutual TLS (SEQREC_TLS_CERT, SEQREC_TLS_KEY and SEQREC_TLS_CLIENT_CA)"


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) from host:port; IPv6 brackets are removed ("[::]:8080" → ("::", 8080))."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this host can reach; "" and 0.0.0.0 / :: mean every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def listen_address(env: Env, name: str, default: str, *, guarded: bool, credentials: str) -> str:
    """The host:port in variable `name` (default `default`); SettingsError when it lies beyond loopback,
    `guarded` is False (no credentials configured) and SEQREC_ALLOW_INSECURE is not true.
    `credentials` says what would guard it, for the message."""
    address = env.address(name, default)
    host, _ = split_host_port(address)
    if guarded or is_loopback(host):
        return address
    if env.bool(INSECURE_ENV, False):
        log.warning("listening beyond loopback without credentials (%s=true)", INSECURE_ENV,
                    extra={"variable": name, "address": address})
        return address
    raise SettingsError(f"{name}: {address} is reachable beyond this host but no credentials are configured; "
                        f"set {credentials}, listen on 127.0.0.1, or set {INSECURE_ENV}=true to serve "
                        "without them on purpose")


def grpc_listen_address(env: Env, name: str, default: str, tls: TlsSettings) -> str:
    """`listen_address` for a gRPC service, whose credential is mutual TLS."""
    return listen_address(env, name, default, guarded=tls.mutual, credentials=MUTUAL_TLS)
