"""Multi-process data-parallel training under torchrun: the process group and the few collectives the trainer uses.

    torchrun --standalone --nproc_per_node=N -m seqrec.services.cli train --data ... --out ...

starts N processes that each run the ordinary `seqrec train` code path; torchrun tells each one its place
through WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `session()` joins the process group
(NCCL when CUDA is available, else gloo), pins the GPU named by LOCAL_RANK, quiets INFO logs on every rank
but 0, and leaves the group at the end, also on errors. Without torchrun (WORLD_SIZE unset or 1)
everything here is a no-op and one process trains exactly as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT_ENV = "SEQREC_DIST_TIMEOUT_S"
# Collectives wait this long. The other ranks wait in one while rank 0 alone validates, and at the end
# while it scores the whole test set and writes the bundle, which takes minutes on large data.
DEFAULT_TIMEOUT_S = 3600


def launched() -> bool:
    """True in a process started by torchrun with two or more processes in all."""
    return int(os.environ.get("WORLD_SIZE") or 1) > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """True while this process is in a process group of two or more: collectives run, training is sharded."""
    return _initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: from the process group, else from torchrun's RANK (0 without torchrun)."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK") or 0) if launched() else 0


def world_size() -> int:
    """Processes in the job: from the process group, else from torchrun's WORLD_SIZE (1 without torchrun)."""
    if _initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE") or 1) if launched() else 1


def local_rank() -> int:
    """This process's index on its machine (the GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK") or 0) if launched() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that logs, evaluates and writes the bundle."""
    return rank() == 0


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _timeout() -> dt.timedelta:
    return dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Join the torchrun process group for the duration of the block; a no-op without torchrun.

    Re-entrant: inside a group that already exists (set up here or by the caller) it does nothing,
    and leaving it does not destroy that group.
    """
    if not launched() or _initialized():
        yield
        return
    # torch.distributed.nn's functions take `group=group.WORLD` defaults, evaluated on import: imported
    # (by DistributedDataParallel) while the group exists, they would keep it alive past
    # destroy_process_group, and its gloo threads would die at interpreter exit, at times with SIGABRT.
    import torch.distributed.nn  # noqa: F401

    name = backend()
    options: dict[str, Any] = {}
    if name == "nccl":
        torch.cuda.set_device(local_rank())
        options["device_id"] = torch.device("cuda", local_rank())
    dist.init_process_group(name, timeout=_timeout(), **options)
    root = logging.getLogger()
    level = root.level
    if not is_main() and root.getEffectiveLevel() < logging.WARNING:
        root.setLevel(logging.WARNING)  # one copy of the INFO logs (rank 0's), every rank's warnings
    try:
        yield
    finally:
        root.setLevel(level)
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: T | None = None) -> T:
    """Rank 0's `value` (any picklable Python object: a flag, a number, a dict) on every rank."""
    if not active():
        return value  # type: ignore[return-value]
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def data_parallel(module: torch.nn.Module, device: torch.device, ignore: list[str] | None = None
                  ) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel, its buffers constant (synced once, not at every step).
    Parameters named in `ignore` are left to the caller (row-sparse tables: `all_reduce_sparse_mean`)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False  # torch >= 2.13; broadcast_buffers is deprecated there
    else:
        options["broadcast_buffers"] = False
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    return DistributedDataParallel(module, **options)



def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (on the device the backend uses: CUDA for NCCL)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _shareable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only; every rank returns its result, or raises its error.

    The other ranks wait for rank 0 and then raise an exception of the same type and message (a copy
    of rank 0's, noted as such), so every process of the job ends the same way with the same exit code.
    """
    if not active():
        return fn()
    if not is_main():
        ok, payload = broadcast()
        if ok:
            return payload
        payload.add_note("raised on rank 0 (this rank waited for its result)")
        raise payload
    try:
        result = fn()
    except BaseException as exc:
        with contextlib.suppress(Exception):  # a dead peer must not hide the original error
            broadcast((False, _shareable(exc)))
        raise
    broadcast((True, result))
    return result
