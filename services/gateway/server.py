"""The gateway process (`seqrec serve gateway`): settings from the environment, the HTTP API under
uvicorn and the gRPC front door, JSON logs, graceful shutdown of both on SIGTERM or SIGINT.

Settings (environment variables):

| variable | default | meaning |
|---|---|---|
| SEQREC_GATEWAY_ADDRESS | 127.0.0.1:8080 | HTTP JSON API (beyond loopback: needs SEQREC_API_KEYS) |
| SEQREC_GATEWAY_GRPC_ADDRESS | 127.0.0.1:50050 | gRPC front door; set it empty to disable |
| SEQREC_RANKER | 127.0.0.1:50051 | the ranker's gRPC address |
| SEQREC_API_KEYS | empty | comma-separated keys; when set, every call but the probes needs one |
| SEQREC_MAX_REQUEST_BYTES | 1048576 | larger request bodies get 413 |
| SEQREC_DEADLINE_S | 2.0 | deadline of each ranker call |
| SEQREC_SHUTDOWN_GRACE_S | 10 | on SIGTERM, in-flight requests get this long |
| SEQREC_HEALTH_INTERVAL_S | 2 | how often gRPC health re-checks the ranker |
| SEQREC_GRPC_WORKERS, SEQREC_MAX_CONCURRENT_RPCS | 16, 512 | gRPC front door threads and admission limit |
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from seqrec.services.gateway.grpc_front import GrpcFrontDoor
from seqrec.services.gateway.http_app import create_app
from seqrec.services.gateway.metrics import GatewayMetrics
from seqrec.services.gateway.settings import GatewaySettings
from seqrec.shared.exposure import split_host_port
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tracing import TracingSettings, configure_tracing, shutdown_tracing

log = logging.getLogger("seqrec.gateway")


class _DropColorMessage(logging.Filter):
    """uvicorn attaches an ANSI-coloured copy of its messages; JSON logs do not want it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


class _Uvicorn(uvicorn.Server):
    """uvicorn that also tells the gateway when a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], None]):
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)  # first: uvicorn reads a second SIGINT as "force exit"
        self.on_signal(sig)


class Gateway:
    """Both front doors of one process and their shutdown."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.app = create_app(settings, self.metrics)
        self.grpc = GrpcFrontDoor(settings, self.metrics) if settings.grpc_address else None
        host, port = split_host_port(settings.http_address)
        self.config = uvicorn.Config(self.app, host=host, port=port, log_config=None, access_log=False,
                                     server_header=False, lifespan="on",
                                     timeout_graceful_shutdown=max(1, round(settings.grace_s)))
        self.server = _Uvicorn(self.config, self.request_stop)
        self._stopping = threading.Event()

    def request_stop(self, signum: int) -> None:
        """First signal: readiness off, gRPC drains (in a thread: this runs in a signal handler), HTTP stops."""
        self.server.should_exit = True
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": self.settings.grace_s})
        self.app.state.draining = True
        if self.grpc is not None:
            threading.Thread(target=self.grpc.begin_stop, args=(self.settings.grace_s,), name="grpc-stop",
                             daemon=True).start()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a clean stop, 1 when a server could not start."""
        sock = self.config.bind_socket()  # binds now, so a taken port fails here, not later
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and bind_socket's is 0:
            # without this, Nagle + delayed ACK add ~40 ms to every keep-alive request after the first.
            # Accepted connections inherit the option from the listening socket.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # uvicorn re-raises the signal it handled once it is done: keep it from killing the process
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self.request_stop(s))
        if self.grpc is not None:
            self.grpc.start()
        log.info("gateway listening", extra={
            "http": f"{self.config.host}:{sock.getsockname()[1]}", "ranker": self.settings.ranker,
            "grpc": f"port {self.grpc.port}" if self.grpc else "disabled", "auth": bool(self.settings.api_keys),
            "max_request_bytes": self.settings.max_request_bytes, "deadline_s": self.settings.deadline_s})
        try:
            self.server.run(sockets=[sock])
        finally:
            if self.grpc is not None:
                self.grpc.stop(self.settings.grace_s)
            sock.close()
        if not self.server.started:
            log.error("gateway cannot start: the HTTP server did not start")
            return 1
        shutdown_tracing()
        log.info("stopped")
        return 0


def main() -> int:
    """`seqrec serve gateway`: 2 on bad settings, 1 when a port cannot be bound, 0 after a clean stop."""
    logging.getLogger("uvicorn.error").addFilter(_DropColorMessage())
    try:
        settings = GatewaySettings.from_env()
        configure_tracing("gateway", TracingSettings.from_env(Env()))
    except SettingsError as exc:
        log.error("gateway cannot start: %s", exc)
        return 2
    try:
        gateway = Gateway(settings)
    except (RuntimeError, OSError) as exc:  # grpc cannot bind its port
        log.error("gateway cannot start: %s", exc)
        return 1
    try:
        return gateway.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind its port
        log.error("gateway cannot start: the HTTP server exited (%s)", exc.code)
        if gateway.grpc is not None:
            gateway.grpc.stop(0)
        return 1
