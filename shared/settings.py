"""Service settings from environment variables, failing fast with a message that names the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping


class SettingsError(ValueError):
    """An environment variable is missing or malformed."""


class Env:
    """Typed reads from an environment mapping (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ

    def str(self, name: str, default: str | None = None) -> str:
        value = self.environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise SettingsError(f"{name}: required environment variable is not set")
        return default

    def int(self, name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise SettingsError(f"{name}: {value} is outside [{minimum}, {maximum}]")
        return value

    def float(self, name: str, default: float, minimum: float | None = None) -> float:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}: {value} is below {minimum}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true or false, got {raw!r}")

    def address(self, name: str, default: str) -> str:
        """host:port with a valid port."""
        value = self.str(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise SettingsError(f"{name}: expected host:port, got {value!r}")
        return value

    def optional_address(self, name: str) -> str:
        """host:port, or "" when the variable is unset (the feature it enables is off)."""
        return self.address(name, "") if self.environ.get(name, "").strip() else ""

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise SettingsError(f"{name}: expected one of {list(choices)}, got {value!r}")
        return value
