"""Optional TLS (and mutual TLS) for the gRPC links between seqrec services.

Every service reads the same variables (paths of PEM files); when none is set, servers and channels
are insecure, as before.

- `SEQREC_TLS_CERT`, `SEQREC_TLS_KEY` (server): this service's certificate chain and private key; its
  gRPC port serves TLS.
- `SEQREC_TLS_CLIENT_CA` (server): also require a client certificate signed by this CA (mutual TLS).
- `SEQREC_TLS_CA` (client): channels to peers (gateway → ranker, ranker → embedder, trainer → embedder)
  use TLS and trust this CA; with `SEQREC_TLS_CERT`/`SEQREC_TLS_KEY` set they present that certificate,
  for a peer that requires mutual TLS.
- `SEQREC_TLS_SERVER_NAME` (client): the name expected in the peer's certificate when it is not the
  host of the address.

For mutual TLS, a service's certificate needs both the serverAuth and clientAuth extended key usages
(or none). Files are read once at start-up: rotating certificates means restarting the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from seqrec.shared.settings import Env, SettingsError

CERT_ENV = "SEQREC_TLS_CERT"
KEY_ENV = "SEQREC_TLS_KEY"
CLIENT_CA_ENV = "SEQREC_TLS_CLIENT_CA"
CA_ENV = "SEQREC_TLS_CA"
SERVER_NAME_ENV = "SEQREC_TLS_SERVER_NAME"
MAX_PEM_BYTES = 1 << 20

ChannelOptions = Sequence[tuple[str, object]]


def _read_pem(env: Env, name: str, marker: bytes) -> bytes | None:
    """The PEM file a variable names (None when unset); SettingsError naming the variable otherwise.
    The content is never echoed: a key is a secret."""
    raw = env.environ.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw)
    try:
        data = path.read_bytes()[: MAX_PEM_BYTES + 1]
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data or marker not in data:
        raise SettingsError(f"{name}: {path} is not a PEM file with a {marker.decode().strip('- ')} block")
    return data


@dataclass(frozen=True)
class TlsSettings:
    """PEM contents from the environment; every field None means plaintext (the default)."""

    cert: bytes | None = field(default=None, repr=False)  # this service's certificate chain
    key: bytes | None = field(default=None, repr=False)  # its private key
    client_ca: bytes | None = field(default=None, repr=False)  # servers: require client certificates from this CA
    ca: bytes | None = field(default=None, repr=False)  # clients: trust peers signed by this CA
    server_name: str = ""  # clients: the name expected in the peer's certificate ("" = the target's host)

    @classmethod
    def from_env(cls, env: Env | None = None) -> TlsSettings:
        env = env or Env()
        cert = _read_pem(env, CERT_ENV, b"CERTIFICATE-----")
        key = _read_pem(env, KEY_ENV, b"PRIVATE KEY-----")
        if (cert is None) != (key is None):
            raise SettingsError(f"{CERT_ENV} and {KEY_ENV}: set both (a certificate and its private key) or neither")
        client_ca = _read_pem(env, CLIENT_CA_ENV, b"CERTIFICATE-----")
        if client_ca is not None and cert is None:
            raise SettingsError(f"{CLIENT_CA_ENV}: mutual TLS needs the server's own {CERT_ENV} and {KEY_ENV}")
        ca = _read_pem(env, CA_ENV, b"CERTIFICATE-----")
        server_name = env.str(SERVER_NAME_ENV, "")
        if server_name and ca is None:
            raise SettingsError(f"{SERVER_NAME_ENV}: only meaningful with {CA_ENV} (TLS to peers)")
        return cls(cert=cert, key=key, client_ca=client_ca, ca=ca, server_name=server_name)

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @property
    def dials_tls(self) -> bool:
        return self.ca is not None

    def describe(self) -> str:
        """For start-up logs: "plaintext", "tls" or "mtls" (server side), and the client side."""
        server = "mtls" if self.mutual else "tls" if self.serves_tls else "plaintext"
        return f"server {server}, peers {'tls' if self.dials_tls else 'plaintext'}"

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """None when this service serves plaintext."""
        if self.cert is None or self.key is None:
            return None
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None when channels to peers are plaintext; else TLS trusting `ca`, presenting our certificate if any."""
        if self.ca is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def channel_options(self, options: ChannelOptions = ()) -> list[tuple[str, object]]:
        out = list(options)
        if self.server_name and self.ca is not None:
            out.append(("grpc.ssl_target_name_override", self.server_name))
        return out


PLAINTEXT = TlsSettings()


def open_channel(target: str, tls: TlsSettings | None = None, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to a peer: TLS when `tls` trusts a CA, else insecure."""
    tls = tls or PLAINTEXT
    credentials = tls.channel_credentials()
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=tls.channel_options(options))


def open_aio_channel(target: str, tls: TlsSettings | None = None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """The asyncio twin of `open_channel`."""
    tls = tls or PLAINTEXT
    credentials = tls.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=tls.channel_options(options))


def add_port(server: grpc.Server, address: str, tls: TlsSettings | None = None) -> int:
    """Bind `address` with TLS when this service has a certificate, else insecure; returns the port."""
    credentials = (tls or PLAINTEXT).server_credentials()
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
