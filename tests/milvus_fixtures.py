"""A `milvus-lite server` for tests: Milvus Lite 3 allows one process per data directory, so tests
talk to it over gRPC exactly as to a Milvus server. `tests/conftest.py` makes `milvus_server` global."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqrec.shared.local_services import free_port, start_milvus_lite

__all__ = ["free_port", "milvus_lite_server", "milvus_server"]


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
