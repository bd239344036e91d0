"""Milvus for tests: a `milvus-lite server` (Milvus Lite 3 allows one process per data directory, so tests
talk to it over gRPC exactly as to a Milvus server) and a real Milvus standalone server (`milvus-server`,
the dev extra's `milvus` package), or the server MILVUS_URI names. `tests/conftest.py` makes them global."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqrec.shared.local_services import free_port, start_milvus_lite, start_milvus_server

__all__ = ["free_port", "milvus_lite_server", "milvus_server", "milvus_standalone"]


@contextlib.contextmanager
def milvus_lite_server(data_dir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `milvus-lite server` on a free loopback port; yields (process, uri) once it accepts connections."""
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install seqrec[ranker])")
    server = start_milvus_lite(data_dir)
    try:
        yield server.process, f"http://{server.address}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a milvus-lite server with a temporary data directory, shared by the session."""
    with milvus_lite_server(tmp_path_factory.mktemp("milvus") / "data") as (_, uri):
        yield uri


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real Milvus server: MILVUS_URI when set, else a `milvus-server` started for the session (stopped
    with a bounded grace, then killed with its children)."""
    if os.environ.get("MILVUS_URI"):
        yield os.environ["MILVUS_URI"]
        return
    server = start_milvus_server(tmp_path_factory.mktemp("milvus-standalone") / "data")
    try:
        yield f"http://{server.address}"
    finally:
        server.stop()
