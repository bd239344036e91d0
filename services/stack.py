"""`seqrec up`: the whole product on this machine, each service its own process on loopback.

Redis (the binary the set-up installed), Milvus (a Milvus standalone server from the dev extra's `milvus`
package when installed, else `milvus-lite server`; `--milvus` chooses), embedder, ranker, trainer and gateway. With no
bundle it trains on a demo dataset (or `--data`) and publishes the result first.
Ctrl-C or SIGTERM stops every child cleanly; a child that dies is reported and stops the stack.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqrec.shared.bundle import BundleError
from seqrec.shared.local_services import (
    ManagedProcess,
    ServiceStartError,
    console_script,
    free_port,
    start_milvus_lite,
    start_milvus_server,
    start_redis,
    start_service,
)
from seqrec.shared.logs import show_progress

READY_TIMEOUT_S = 120.0


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None, help="serve this bundle (or bundle root) as is")
    parser.add_argument("--data", type=Path, default=None, help="train on this interaction file first")
    parser.add_argument("--items", type=Path, default=None, help="item table for --data")
    parser.add_argument("--user-col", default="user_id")
    parser.add_argument("--item-col", default="item_id")
    parser.add_argument("--time-col", default="timestamp")
    parser.add_argument("--time-unit", default="auto", help="unit of numeric timestamps: s, ms, us, ns or auto")
    parser.add_argument("--meta-cols", default="", help="comma-separated item metadata columns for --data")
    parser.add_argument("--name-col", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the spec's)")
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port")
    parser.add_argument("--workdir", type=Path, default=Path(".seqrec"), help="stores, bundles and logs")
    parser.add_argument("--milvus", choices=["auto", "server", "lite"], default="auto",
                        help="vector store: a Milvus standalone server (`milvus-server`, dev extra: the engine "
                             "production runs, much faster searches), `milvus-lite server` (base install, lighter "
                             "and quicker to start) or auto (default: the server when installed, else lite)")
    parser.add_argument("--no-progress", action="store_true")


@dataclass
class Stack:
    """The running children, stopped in reverse start order."""

    workdir: Path
    children: list[ManagedProcess] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    def add(self, child: ManagedProcess) -> ManagedProcess:
        self.children.append(child)
        self.addresses[child.name] = child.address
        self._write_state()
        return child

    def _write_state(self) -> None:
        """workdir/stack.json: each child's pid, address and log, for operators (and tests)."""
        state = {c.name: {"pid": c.process.pid, "address": c.address, "log": str(c.log_path)} for c in self.children}
        (self.workdir / "stack.json").write_text(json.dumps(state, indent=1))

    def dead(self) -> ManagedProcess | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def milvus_engine(choice: str) -> str:
    """`--milvus auto` is the Milvus server when its binary is installed, else Milvus Lite."""
    if choice != "auto":
        return choice
    return "server" if console_script("milvus-server") else "lite"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wait_http_ready(url: str, child: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise ServiceStartError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise ServiceStartError(f"{child.name}: {url} not ready within {timeout:.0f} s:\n{child.log_tail()}")


def _train(args: argparse.Namespace, root: Path, embedder: str) -> Path:
    """Train on --data or the demo dataset (embedding text through the running embedder)."""
    from seqrec.services.embedder.client import EmbedderClient
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.services.trainer.report import test_headline
    from seqrec.shared.config import DataConfig, TrainConfig, build_hparams

    if args.data is None:
        from seqrec.services.demo_data import write_demo_dataset

        data, items = write_demo_dataset(args.workdir / "demo")
        _say(f"demo dataset: {data} and {items} (viewing histories of series, with strays, noise and new shows; "
             "genre, in_stock, description)")
        dc = DataConfig(data=str(data), items=str(items), meta_cols=("genre", "in_stock", "description"),
                        name_col="title")
        hp = build_hparams(max_len=20, epochs=args.epochs or 30, patience=30)
    else:
        dc = DataConfig(data=str(args.data), user_col=args.user_col, item_col=args.item_col, time_col=args.time_col,
                        time_unit=args.time_unit, meta_cols=tuple(c for c in args.meta_cols.split(",") if c),
                        name_col=args.name_col,
                        items=str(args.items) if args.items else None)
        hp = build_hparams(epochs=args.epochs)
    path, metrics = run_training(TrainConfig(data=dc, hparams=hp), root, progress=show_progress(args.no_progress),
                                 embedder=EmbedderClient(embedder, timeout=60.0))
    _say(f"trained {path.name}: {test_headline(metrics)}")
    return path


def _examples(bundle_path: Path) -> list[dict[str, Any]]:
    """The spec's four request shapes and a gap, filled with ids that exist in the served bundle."""
    from seqrec.shared.bundle import HISTORIES, Bundle
    from seqrec.shared.registry import resolve_bundle

    bundle = Bundle.open(resolve_bundle(bundle_path), verify=False)
    row = next(r for r in bundle.iter_jsonl(HISTORIES) if len(r["items"]) >= 3)
    user, items = row["user_id"], row["items"]
    schema = bundle.manifest.metadata_schema
    filters = {"meta.in_stock": True} if schema.get("in_stock") == "bool" else {}
    return [
        {"query_type": "item_to_item", "item_id": items[0], "top_k": 5, **({"filters": filters} if filters else {})},
        {"query_type": "user_to_item", "user_id": user, "top_k": 5},
        {"query_type": "contextual", "user_id": user, "item_id": items[-1], "top_k": 5},
        {"query_type": "sequential", "session_items": items[-3:], "top_k": 5},
        {"query_type": "gap", "session_items": [items[-3], items[-1]], "gap_position": 1, "top_k": 5},
    ]


def start_stack(args: argparse.Namespace, say: Callable[[str], None] = _say) -> tuple[Stack, Path]:
    """Start every service (training and publishing first when needed); returns the stack and bundle root."""
    from seqrec.services.ranker.publish import publish
    from seqrec.shared.registry import resolve_bundle

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir)
    logs = workdir / "logs"
    try:
        redis = stack.add(start_redis(workdir / "redis"))
        if milvus_engine(args.milvus) == "server":
            milvus = stack.add(start_milvus_server(workdir / "milvus-server"))
        else:
            milvus = stack.add(start_milvus_lite(workdir / "milvus"))
        say(f"redis on {redis.address}, {milvus.name} on {milvus.address}")
        redis_url, milvus_uri = f"redis://{redis.address}/0", f"http://{milvus.address}"
        embedder_port = free_port()
        embedder = stack.add(start_service("embedder", {"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{embedder_port}"},
                                           embedder_port, logs, READY_TIMEOUT_S))
        say(f"embedder on {embedder.address}")
        if args.bundle is not None:  # a bundle, or a bundle root whose LIVE file names one
            root = args.bundle.resolve()
            bundle = resolve_bundle(root)
            root = root if bundle != root else root.parent
        else:
            root = workdir / "bundles"
            bundle = _train(args, root, embedder.address)
        publish(bundle, redis_url, milvus_uri, progress=show_progress(args.no_progress))  # idempotent
        say(f"published {bundle.name}")
        common = {"REDIS_URL": redis_url, "MILVUS_URI": milvus_uri, "SEQREC_EMBEDDER": embedder.address}
        ranker_port, trainer_port, grpc_port = free_port(), free_port(), free_port()
        ranker = stack.add(start_service("ranker", {**common, "SEQREC_BUNDLE": str(root),
                                                    "SEQREC_RANKER_ADDRESS": f"127.0.0.1:{ranker_port}"},
                                         ranker_port, logs, READY_TIMEOUT_S))
        data_root = args.data.resolve().parent if args.data is not None else workdir / "demo"
        data_root.mkdir(parents=True, exist_ok=True)
        trainer = stack.add(start_service("trainer", {**common, "SEQREC_BUNDLE_ROOT": str(root),
                                                      "SEQREC_DATA_ROOT": str(data_root),
                                                      "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{trainer_port}"},
                                          trainer_port, logs, READY_TIMEOUT_S))
        gateway = stack.add(start_service("gateway", {"SEQREC_RANKER": ranker.address,
                                                      "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{args.port}",
                                                      "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}"},
                                          args.port, logs, READY_TIMEOUT_S))
        _wait_http_ready(f"http://127.0.0.1:{args.port}/readyz", gateway, READY_TIMEOUT_S)
        say(f"ranker on {ranker.address}, trainer on {trainer.address}, gateway gRPC on 127.0.0.1:{grpc_port}")
        return stack, root
    except BaseException:
        stack.stop()
        raise


def run_up(args: argparse.Namespace) -> int:
    stopping = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        stack, root = start_stack(args)
    except (ServiceStartError, BundleError, ValueError, OSError) as exc:
        _say(f"seqrec up: {exc}")
        return 1
    url = f"http://127.0.0.1:{args.port}"
    lines = [f"\nseqrec is up: {url}", f"  console:  {url}/ui   (pick a user, see the four query types side by side)",
             f"  API docs: {url}/docs", f"  logs:     {stack.workdir / 'logs'}", ""]
    examples = _examples(root)
    for example in examples:
        lines.append(f"curl -s {url}/v1/recommend -H 'content-type: application/json' -d '{json.dumps(example)}'")
    lines += ["", f"curl -s {url}/v1/events -H 'content-type: application/json' -d "
              "'{\"events\": [{\"user_id\": \"new_user\", \"item_id\": \"" + examples[0]["item_id"] + "\"}]}'",
              "", "Ctrl-C stops everything."]
    print("\n".join(lines), flush=True)
    code = 0
    while not stopping.wait(0.5):
        dead = stack.dead()
        if dead is not None:
            _say(f"seqrec up: {dead.name} exited with code {dead.process.returncode}; stopping the stack. "
                 f"Its log ({dead.log_path}) ends with:\n{dead.log_tail()}")
            code = 1
            break
    _say("stopping...")
    stack.stop()
    _say("stopped")
    return code
