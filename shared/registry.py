"""The bundle registry: a bundle root's versions, which one is live, publication and rollback.

The one source of truth for the live version is the root's `LIVE` file. Every ranker reads the
bundle's files anyway (the ONNX encoder, the vocabulary), so a pointer kept beside them can be
read with no store up, cannot name a version whose files are missing, and moves atomically (a
rename). Milvus collections and Redis histories are data keyed by version: publishing loads them
first and moves the pointer last, so a ranker that follows the pointer always finds them.
`published.json` is the history of publications; rolling back pops it, and nothing else does.

The registry is storage-agnostic and torch-free: the caller passes the loader that fills the
stores (`seqrec.services.ranker.publish`), so the trainer service and the `seqrec publish`
command share this one implementation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from seqrec.shared.bundle import MANIFEST, Bundle, BundleError

log = logging.getLogger(__name__)
LIVE_FILE = "LIVE"
PUBLISHED_FILE = "published.json"
LOCK_FILE = ".registry.lock"

Loader = Callable[[Path], object]  # fills the online stores for a bundle directory (idempotent)
# judges a candidate against the live bundle (None: nothing is live) and raises GateRefused to hold it back
Gate = Callable[[Bundle, "Bundle | None"], None]


class RegistryError(BundleError):
    """The registry cannot do what was asked."""


class InvalidVersion(RegistryError, ValueError):
    """A string that cannot name a bundle version (empty, a path, hidden)."""


class VersionNotFound(RegistryError, LookupError):
    """No bundle with this version in the root."""


class GateRefused(RegistryError):
    """The quality gate kept the candidate from going live; `decision` says why, with the figures."""

    def __init__(self, reason: str, decision: dict[str, object]):
        super().__init__(f"held by the quality gate: {reason}")
        self.decision = decision


class NothingToRollBack(RegistryError):
    """No earlier publication to return to."""


def resolve_bundle(path: Path) -> Path:
    """A bundle directory as given, or the live version of a bundle root."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    live = BundleRegistry(path).live_version()
    if live:
        return path / live
    raise BundleError(f"{path}: neither a bundle nor a bundle root with a {LIVE_FILE} file (run seqrec publish)")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class BundleRegistry:
    """One bundle root: every publication and rollback in it goes through here, one at a time."""

    _thread_locks: dict[Path, threading.Lock] = {}
    _thread_locks_guard = threading.Lock()

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- reads --------------------------------------------------------------------------------

    def live_version(self) -> str:
        """The live version, or "" when nothing was published."""
        try:
            return (self.root / LIVE_FILE).read_text().strip()
        except OSError:
            return ""

    def history(self) -> list[str]:
        """Published versions, oldest first; the last one is live."""
        try:
            published = json.loads((self.root / PUBLISHED_FILE).read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise RegistryError(f"{self.root / PUBLISHED_FILE}: not valid JSON ({exc})") from exc
        if not isinstance(published, list) or not all(isinstance(v, str) for v in published):
            raise RegistryError(f"{self.root / PUBLISHED_FILE}: expected a list of versions")
        return published

    def path_of(self, version: str) -> Path:
        """The directory of a version in this root; refuses anything that is not a plain version name."""
        version = version.strip()
        if not version:
            raise InvalidVersion("version: required")
        if version != Path(version).name or version.startswith("."):
            raise InvalidVersion(f"version: {version!r} is not a bundle version")
        path = self.root / version
        if not (path / MANIFEST).is_file():
            raise VersionNotFound(f"version: no bundle {version!r} in {self.root}")
        return path

    def versions(self) -> list[Bundle]:
        """Every readable bundle, newest first (manifests only: checksums are verified when publishing)."""
        bundles = []
        for path in self.root.iterdir() if self.root.is_dir() else ():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            try:
                bundles.append(Bundle.open(path, verify=False))
            except BundleError as exc:
                log.warning("skipping unreadable bundle", extra={"path": str(path), "error": str(exc)})
        return sorted(bundles, key=lambda b: (b.manifest.created_at, b.version), reverse=True)

    # -- changes ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One change at a time: across threads (a lock per root) and processes (flock on a file)."""
        key = self.root.resolve()
        with BundleRegistry._thread_locks_guard:
            thread_lock = BundleRegistry._thread_locks.setdefault(key, threading.Lock())
        self.root.mkdir(parents=True, exist_ok=True)
        with thread_lock, open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _make_live(self, version: str, history: list[str]) -> None:
        _write_atomic(self.root / PUBLISHED_FILE, json.dumps(history, indent=1))
        _write_atomic(self.root / LIVE_FILE, version + "\n")

    def publish(self, path: Path, load: Loader, gate: Gate | None = None) -> str:
        """Verify the bundle, let `gate` judge it against the live one, load it into the stores, then make it
        live; returns its version. A refusal (GateRefused) leaves the stores and the live version as they were.

        Publishing the live version again reloads it (idempotent) and leaves the history as it is.
        """
        path = Path(path)
        if path.resolve().parent != self.root.resolve():
            raise RegistryError(f"{path}: not a bundle in the root {self.root}")
        version = self.path_of(path.name).name
        with self._exclusive():
            bundle = Bundle.open(path)  # every checksum, before any store is touched
            if bundle.version != version:
                raise RegistryError(f"{path}: the directory name must be the bundle's version {bundle.version!r}")
            if gate is not None:
                live = self.live_version()
                gate(bundle, Bundle.open(self.path_of(live), verify=False) if live else None)
            load(path)
            history = self.history()
            if not history or history[-1] != version:
                history.append(version)
            self._make_live(version, history)
        log.info("live", extra={"bundle": version, "root": str(self.root)})
        return version

    def rollback(self, load: Loader, version: str = "") -> str:
        """Make `version` live again, or by default the one published before the live one.

        A named version is published (it joins the history); the default pops the history. Either
        way the stores are loaded first: the collections may have been dropped since.
        """
        if version.strip():
            return self.publish(self.path_of(version), load)
        with self._exclusive():
            history = self.history()
            if len(history) < 2:
                raise NothingToRollBack(f"{self.root}: no earlier published version to roll back to")
            previous = history[-2]
            path = self.path_of(previous)
            Bundle.open(path)
            load(path)
            self._make_live(previous, history[:-1])
        log.info("rolled back", extra={"bundle": previous, "root": str(self.root)})
        return previous
