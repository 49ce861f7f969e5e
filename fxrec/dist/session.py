"""The ranks of a distributed fxrec run: the process group, who writes, and local launching.

Ranks come from torchrun's environment (`torchrun --nproc-per-node 2 -m fxrec train fm ...`) or from
`launch`, which `fxrec train ... --nproc N` uses to start N ranks on this machine. Either way each
rank runs the same job; `Session.main` (rank 0) is the only one that writes shared files.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# What TorchRec 1.8 can shard on CPU over gloo (its gloo tests run these); row-wise and
# table-row-wise need an asynchronous reduce-scatter that gloo lacks.
GLOO_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")


@dataclass(frozen=True)
class Session:
    """This process's place in the run: rank, world size, and the device its model lives on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend() if dist.is_initialized() else "none"

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()


def in_launched_rank() -> bool:
    """Whether torchrun (or `launch`) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current() -> Session | None:
    """The session of an initialised process group, or None in a plain single process."""
    if not dist.is_initialized():
        return None
    rank = dist.get_rank()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return Session(rank=rank, world_size=dist.get_world_size(), device=device)


def start(backend: str = "auto") -> Session:
    """Join the process group named by torchrun's environment variables (a group of one without them).

    `auto`: NCCL when this machine has a CUDA device for every local rank, else gloo.
    """
    session = current()
    if session is not None:
        return session
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(
            int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count()
        )
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    session = current()
    assert session is not None
    return session


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (itself without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return int(sock.getsockname()[1])


# A rank that stops on a reported error (bad input, or `max_steps`) exits with this code after handing
# the error to the parent, which raises it again as the one process would: the CLI's one line, no trace.
REPORTED_EXIT = 3


def _reported(error: BaseException) -> tuple[str, list[str]] | None:
    """("input", problems) or ("stopped", [message]) for the errors the CLI reports in one line; else None."""
    from fxrec.errors import InputError, TrainingInterrupted

    if isinstance(error, InputError):
        return "input", error.problems or [str(error)]
    if isinstance(error, TrainingInterrupted):
        return "stopped", [str(error)]
    return None


def _raise_reported(kind: str, lines: list[str]) -> None:
    from fxrec.errors import InputError, TrainingInterrupted

    if kind == "input":
        raise InputError(*lines)
    raise TrainingInterrupted(*lines)


def _rank_main(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        value = fn(*args)
        if rank == 0:
            results.put(("value", value))
    except Exception as error:
        reported = _reported(error)
        if reported is None:
            raise
        results.put(("raised", *reported))
    else:
        return
    finally:
        stop()
    sys.exit(REPORTED_EXIT)  # a reported error: the parent raises it (and ends any rank still waiting)


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in `nproc` fresh local ranks (spawned, like torchrun's workers); rank 0's result.

    `fn` must be importable (a module-level function) and its arguments picklable. A rank that fails
    fails the whole launch, with the rank's exit code in the message. A rank stopped by bad input
    (InputError) or by `max_steps` (TrainingInterrupted) raises that error here, as one process would,
    so `fxrec train --nproc N` ends with the same one-line message and exit code as one process.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessExitedException

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    try:
        mp.start_processes(
            _rank_main, args=(nproc, port, fn, args, results), nprocs=nproc, join=True, start_method="spawn"
        )
    except ProcessExitedException as failure:
        if failure.exit_code != REPORTED_EXIT or results.empty():
            raise
        answer = results.get()
        if answer[0] != "raised":
            raise
        _raise_reported(answer[1], answer[2])
    return results.get()[1] if not results.empty() else None
