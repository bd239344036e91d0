"""The caller's deadline, carried to every store call made on its behalf.

The gRPC error interceptor opens a `call_deadline` around each call with the time the caller has left;
store clients bound their own timeouts by it (`bounded`), so a call the caller has given up on stops
waiting on Milvus when the caller stops waiting on it, instead of working on for the store's full timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("seqrec_call_deadline", default=None)


class DeadlineExceeded(Exception):
    """The caller's deadline passed before a store call could start (maps to DEADLINE_EXCEEDED).

    Not a TimeoutError: store clients retry those (redis-py does), and a passed deadline never improves."""


@contextmanager
def call_deadline(remaining_s: float | None) -> Iterator[None]:
    """Within the block, `bounded` caps timeouts at `remaining_s` from now (None: no deadline)."""
    token = _deadline.set(None if remaining_s is None else time.monotonic() + remaining_s)
    try:
        yield
    finally:
        _deadline.reset(token)


def bounded(timeout: float) -> float:
    """`timeout`, or less when the current call's deadline is nearer; DeadlineExceeded when it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the caller's deadline passed before the store call")
    return min(timeout, left)
