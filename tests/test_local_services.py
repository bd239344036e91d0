"""Local child services stop within a bounded grace and never leave a process behind: a launcher that starts
the real server as its own child (as `milvus-server` does) and a server that ignores SIGTERM (as Milvus does
for more than 15 s) are both gone after `stop`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from seqrec.shared.local_services import ManagedProcess, free_port, live_group_members, start_milvus_server

# A launcher: its child listens on the port and ignores SIGTERM; the launcher itself exits on SIGTERM.
LAUNCHER = """
import socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
open(sys.argv[2], "w").write("ready")
time.sleep(600)
''', sys.argv[1], sys.argv[2]])
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent is not running
        return stat.read().split()[2] != "Z"


def _group(pgid: int) -> list[int]:
    return live_group_members(pgid)


def test_stop_kills_a_launchers_stubborn_child_after_the_grace(tmp_path: Path) -> None:
    port, ready = free_port(), tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(port), str(ready)], start_new_session=True)
    server = ManagedProcess("launcher", process, port, tmp_path / "log")
    server.wait_ready(30.0)
    children = [pid for pid in _group(process.pid) if pid != process.pid]
    assert children, "the launcher's child is running"
    started = time.monotonic()
    server.stop(timeout=2.0)
    assert time.monotonic() - started < 10.0
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children) and _group(process.pid) == []


def test_a_second_milvus_server_starts_beside_the_sessions(milvus_standalone: str, tmp_path: Path) -> None:
    """Each server's embedded etcd gets its own ports, so two servers (a test's and `seqrec up`'s) coexist."""
    from pymilvus import MilvusClient

    second = start_milvus_server(tmp_path / "second")
    try:
        for uri in (milvus_standalone, f"http://{second.address}"):
            client = MilvusClient(uri=uri, timeout=10.0)
            try:
                assert isinstance(client.list_collections(), list)
            finally:
                client.close()
    finally:
        second.stop()
    assert _group(second.process.pid) == []
