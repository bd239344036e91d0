"""Redis connections whose every command is bounded by the caller's deadline (shared/deadlines.py).

redis-py has one socket timeout per connection; these connections cut each read at the caller's remaining
time instead when that is nearer, and refuse to send a command once the deadline has passed, so a ranker
call the gateway has given up on stops waiting on a hung Redis when the gateway stops waiting on it.
A read cut short disconnects that connection (redis-py's rule for any timeout): the reply cannot be
matched to a later command.
"""

from __future__ import annotations

from typing import Any

from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

from seqrec.shared.deadlines import DeadlineExceeded, bounded

MIN_READ_S = 0.001  # a deadline that passes between send and read still gets a (failing) read


class _DeadlineBound:
    socket_timeout: float | None

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        bounded(self.socket_timeout or 0.0)  # DeadlineExceeded before anything is sent
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        if "timeout" not in kwargs and self.socket_timeout:
            try:
                left = bounded(self.socket_timeout)
            except DeadlineExceeded:
                left = MIN_READ_S
            if left < self.socket_timeout:
                kwargs["timeout"] = max(left, MIN_READ_S)
        return super().read_response(disable_decoding, **kwargs)  # type: ignore[misc]


class DeadlineConnection(_DeadlineBound, Connection):
    """TCP."""


class DeadlineSSLConnection(_DeadlineBound, SSLConnection):
    """TLS (rediss://)."""


class DeadlineUnixConnection(_DeadlineBound, UnixDomainSocketConnection):
    """A Unix socket (unix://)."""


def connection_class_for(scheme: str) -> type[Connection] | type[UnixDomainSocketConnection]:
    """The deadline-bound connection class for a node scheme: redis, rediss or unix."""
    return {"rediss": DeadlineSSLConnection, "unix": DeadlineUnixConnection}.get(scheme, DeadlineConnection)
