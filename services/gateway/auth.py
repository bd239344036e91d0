"""API-key authentication shared by the HTTP API and the gRPC front door.

A key comes as `X-API-Key: KEY` or `Authorization: Bearer KEY`. Keys are compared as SHA-256
digests with `hmac.compare_digest` against every configured key, so neither a key's content nor
its length shows in the timing. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """The accepted keys; with none configured every request is allowed."""

    def __init__(self, keys: Iterable[str]):
        self._digests = [_digest(k) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, candidate: str | None) -> bool:
        if not self._digests:
            return True
        if not candidate:
            return False
        given = _digest(candidate)
        matched = False
        for digest in self._digests:  # no early exit: every key costs the same
            matched |= hmac.compare_digest(given, digest)
        return matched

    def allows(self, api_key: str | None, authorization: str | None) -> bool:
        """True when either header carries an accepted key (or authentication is off)."""
        if not self._digests:
            return True
        return self.accepts(api_key) or self.accepts(bearer_token(authorization))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
