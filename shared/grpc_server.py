"""What every seqrec gRPC server shares: the server factory, error mapping, health, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seqrec.shared.deadlines import DeadlineExceeded, call_deadline
from seqrec.shared.error_details import rich_status
from seqrec.shared.grpc_handlers import Behaviour, rewrap
from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tracing import TracingInterceptor, TracingSettings, configure_tracing, shutdown_tracing

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # largest request or response accepted (bulk events, big top-k)

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),  # ping idle clients every 30 s so dead peers are noticed
    ("grpc.keepalive_timeout_ms", 10_000),  # and drop them when a ping goes unanswered for 10 s
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # accept client pings this often
    ("grpc.keepalive_permit_without_calls", 1),
]


# Clients balance calls over the replicas a name resolves to and re-resolve when a connection closes: replicas
# an autoscaler adds get traffic within about this long (SEQREC_MAX_CONNECTION_AGE_S of the ranker, embedder).
DEFAULT_MAX_CONNECTION_AGE_S = 300.0
CONNECTION_AGE_GRACE_S = 30.0  # calls in flight when a connection reaches its maximum age finish within this
MAX_DETAILS_CHARS = 2000  # gRPC refuses trailers over 16 KiB: the caller would get a transport error instead


class ErrorMapping:
    """Ordered (exception type → status code) pairs; the first match wins."""

    def __init__(self, pairs: Iterable[tuple[type[BaseException], grpc.StatusCode]]):
        self.pairs = list(pairs)

    def code_for(self, exc: BaseException) -> grpc.StatusCode | None:
        for kind, code in self.pairs:
            if isinstance(exc, kind):
                return code
        return None


class MalformedRequest:
    """Stands in for a request whose bytes are not a valid message (e.g. invalid UTF-8 in a string)."""

    def __init__(self, error: Exception):
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: grpc would answer a parse failure with INTERNAL."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends; reported as INVALID_ARGUMENT
            return MalformedRequest(exc)

    return parse


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain exceptions to status codes in one place; anything unexpected is INTERNAL and logged.

    Also refuses work whose deadline has already passed, and answers requests that are not valid
    protobuf (string fields must be UTF-8) with INVALID_ARGUMENT instead of grpc's INTERNAL. Covers
    unary calls and server streams (an error raised while a stream runs ends it with its status). Refusals
    carry typed details (shared/error_details.py): BadRequest naming the field, RetryInfo where a retry helps.
    """

    def __init__(self, mapping: ErrorMapping):
        self.mapping = mapping

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        def unary(inner: Behaviour) -> Behaviour:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                remaining = self._refuse_early(request, context)
                try:
                    with call_deadline(remaining):
                        return inner(request, context)
                except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                    self._abort(exc, context, method)
            return guarded

        def stream(inner: Behaviour) -> Behaviour:
            def guarded_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._refuse_early(request, context)
                try:
                    yield from inner(request, context)
                except Exception as exc:  # noqa: BLE001 - as for unary calls
                    self._abort(exc, context, method)
            return guarded_stream

        return rewrap(handler, unary, stream, tolerant)

    @staticmethod
    def _refuse_early(request: Any, context: grpc.ServicerContext) -> float | None:
        """The call's remaining time; aborts a call already past its deadline or whose bytes did not parse."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before the call started")
        if isinstance(request, MalformedRequest):
            context.abort_with_status(rich_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: not a valid message ({request.error}); string fields must be UTF-8"))
        return remaining

    def _abort(self, exc: Exception, context: grpc.ServicerContext, method: str) -> None:
        left = context.time_remaining()
        # a store call cut short by the caller's deadline is the caller's timeout, not an outage
        code = (grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(exc, DeadlineExceeded)
                or (left is not None and left <= 0) else self.mapping.code_for(exc))
        if code is None:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error", extra={"method": method, "incident": incident})
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")
        details = str(exc)
        if len(details) > MAX_DETAILS_CHARS:  # a message quoting a huge input would overflow the trailers
            details = details[:MAX_DETAILS_CHARS] + f"... ({len(details)} characters)"
        log.info("request refused", extra={"method": method, "code": code.name, "error": details})
        context.abort_with_status(rich_status(code, details))  # BadRequest / RetryInfo details where they apply


def make_server(max_workers: int, max_concurrent_rpcs: int, interceptors: Iterable[grpc.ServerInterceptor] = (),
                max_connection_age_s: float = 0.0) -> grpc.Server:
    """A thread-pool server; beyond `max_concurrent_rpcs` in flight, new calls get RESOURCE_EXHAUSTED.

    `max_connection_age_s` > 0: each client connection is closed (GOAWAY; calls in flight get
    CONNECTION_AGE_GRACE_S to finish) after about that long, so clients re-resolve the service's name and
    spread over replicas added since they connected. 0 keeps connections for as long as clients do.
    Every call gets a trace span first (shared/tracing.py), then goes through `interceptors` in order."""
    options = list(SERVER_OPTIONS)
    if max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE_S * 1000))]
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                       interceptors=[TracingInterceptor(), *interceptors], options=options,
                       maximum_concurrent_rpcs=max_concurrent_rpcs)


class HealthReporter:
    """Standard grpc.health.v1 service whose status comes from a probe run every `interval` seconds."""

    def __init__(self, server: grpc.Server, services: list[str], probe: Callable[[], tuple[bool, str]],
                 interval: float):
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        self.services = ["", *services]
        self.probe = probe
        self.interval = interval
        self.serving = False
        self.reason = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._set(False, "starting")

    def _set(self, ok: bool, reason: str) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if ok != self.serving or reason != self.reason:
            log.info("health changed", extra={"serving": ok, "reason": reason})
        self.serving, self.reason = ok, reason
        for name in self.services:
            self.servicer.set(name, status)

    def check_now(self) -> None:
        try:
            ok, reason = self.probe()
        except Exception as exc:  # noqa: BLE001 - a failing probe means not serving, never a crash
            ok, reason = False, f"health probe failed: {exc}"
        self._set(ok, reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_now()

    def start(self) -> None:
        self.check_now()
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self.servicer.enter_graceful_shutdown()


def enable_reflection(server: grpc.Server, service_names: Iterable[str]) -> None:
    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], server)


def run_service(name: str, build: Callable[[], Any], startup_errors: tuple[type[BaseException], ...]) -> int:
    """`main()` of a gRPC service: build the app (exit 2 on a startup error), serve until SIGTERM/SIGINT.

    The app has `start()`, `server`, `settings.grace_s` and `drain()` (report NOT_SERVING, stop taking work).
    Traces are set up first (SEQREC_OTLP_ENDPOINT ...) and flushed after the server stopped.
    """
    try:
        configure_tracing(name, TracingSettings.from_env(Env()))
        app = build()
    except (SettingsError, *startup_errors) as exc:
        log.error("%s cannot start: %s", name, exc)
        return 2
    app.start()
    serve_until_signal(app.server, app.drain, app.settings.grace_s)
    shutdown_tracing()
    return 0


def serve_until_signal(server: grpc.Server, on_stop: Callable[[], None], grace: float) -> None:
    """Block until SIGTERM or SIGINT, then stop accepting calls and let in-flight ones finish (`grace` s)."""
    stopping = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": grace})
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    stopping.wait()
    on_stop()
    server.stop(grace).wait()
    log.info("stopped")
