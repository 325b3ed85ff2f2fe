"""Data-parallel training through torchrun: launching, the process group, and the few collectives `fit` needs.

`train.nproc > 1` makes the train stage run itself as `nproc` workers through torchrun's launcher (what
`torchrun --standalone` does: one machine; gloo on the CPU, nccl on GPUs, one GPU per process).
`train.batch_size` stays the *global* batch: each optimizer step splits one batch across the processes and
DistributedDataParallel averages their gradients, so the hyperparameters mean the same thing at any `nproc`. Only
rank 0 writes outputs and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank 0 of 1 when training runs in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Context()


def launched() -> bool:
    """True inside a process started by torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: list[str]) -> int:
    """Run the script and arguments `argv` as `nproc` workers on this machine (what `torchrun --standalone`
    does, through its Python API); returns the exit code: 0, or the first failed worker's.

    The workers print their own errors; torchrun's summary traceback of a failed worker is left out.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Split the cores between the workers (torchrun's default of 1 thread each wastes the rest, and warns).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )  # fmt: skip
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers report their errors
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def init(device: torch.device, nproc: int) -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun; returns this process's context and device."""
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return SINGLE, device
    if int(os.environ["WORLD_SIZE"]) != nproc:  # an outer launcher's environment, not ours
        raise RuntimeError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but train.nproc is {nproc}")
    ctx = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    _die_with_parent()
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def _die_with_parent() -> None:
    """Exit when torchrun goes away. A SIGKILLed torchrun cannot stop its workers, and orphans would go on
    training and writing next to the rerun that resumes them."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-torchrun", daemon=True).start()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The elementwise sum of `tensor` over all processes (in place; a no-op in a single process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def min_(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The elementwise minimum of `tensor` over all processes (in place)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def gather(value: Any, ctx: Context) -> list[Any]:
    """Every process's `value`, in rank order (a one-element list in a single process)."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out
