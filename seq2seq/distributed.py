"""Data-parallel training through torchrun: launching, the process group, the few collectives `fit` needs, and
the device plumbing beside its loop (DDP wrapping, splitting a batch between processes, autocast).

`train.nproc > 1` makes the train stage run itself as `nproc` workers through torchrun's launcher (what
`torchrun --standalone` does: one machine; gloo on the CPU, nccl on GPUs, one GPU per process).
`train.batch_size` stays the *global* batch: each optimizer step splits one batch across the processes and
DistributedDataParallel averages their gradients, so the hyperparameters mean the same thing at any `nproc`. Only
rank 0 writes outputs and talks to MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from seq2seq.config import StageError, require


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


def launch(nproc: int, argv: list[str], device: torch.device) -> int:
    """Run the Python arguments `argv` as `nproc` workers on this machine (what `torchrun --standalone` does,
    through its Python API), one GPU each on CUDA; returns the exit code: 0, or the first failed worker's.

    The workers print their own errors; torchrun's summary traceback of a failed worker is left out.
    """
    gpus = torch.cuda.device_count() if device.type == "cuda" else nproc
    require(nproc <= gpus, "train.nproc", f"is {nproc} but this machine has {gpus} GPUs")
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


@contextlib.contextmanager
def process_group(device: torch.device, nproc: int) -> Iterator[tuple[Context, torch.device]]:
    """This process's context and device, in the process group while the block runs when torchrun launched it."""
    try:
        yield init(device, nproc)
    finally:
        shutdown()


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


def earliest_step(step: torch.Tensor, ctx: Context) -> int:
    """The smallest positive `step` (a 0-d long tensor, -1 for none) over all processes; -1 if none has one."""
    if ctx.distributed:
        never = torch.iinfo(torch.long).max
        step = torch.where(step > 0, step, never)
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step = torch.where(step == never, -1, step)
    return int(step)


def gather(value: Any, ctx: Context) -> list[Any]:
    """Every process's `value`, in rank order (a one-element list in a single process)."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def wrap(model: torch.nn.Module, device: torch.device, ctx: Context) -> torch.nn.Module:
    """The module a training step runs: `model` itself in a single process; under data parallelism `model` in
    DistributedDataParallel, which broadcasts rank 0's weights now and averages the gradients inside backward()."""
    if not ctx.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def split_batch(index: torch.Tensor, tgt_len: torch.Tensor, ctx: Context) -> tuple[torch.Tensor | None, float]:
    """This process's rows of the global batch `index` (B,), and the weight of its loss; (None, 0.0) for a last
    batch too small to split, which every process skips alike. In a single process: the batch, weight 1.

    DDP averages the gradients over the processes; weighting each process's token-mean loss by its share of the
    global batch's target tokens (tgt_len counts <bos>) makes that average the gradient of the batch's token mean.
    """
    if not ctx.distributed:
        return index, 1.0
    if len(index) < ctx.world:
        return None, 0.0
    batch_tokens = int((tgt_len[index] - 1).sum())
    index = index.tensor_split(ctx.world)[ctx.rank]
    return index, float((tgt_len[index] - 1).sum()) * ctx.world / batch_tokens


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast where asked for (train.bf16) and on CUDA; the CPU always runs fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


@contextlib.contextmanager
def out_of_memory_explained(device: torch.device, batch_size: int) -> Iterator[None]:
    """Running out of memory as a StageError that says what to change (the stages print it as one line)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise StageError(
            f"out of memory on {device} at train.batch_size={batch_size}: lower train.batch_size (or the model's "
            "sizes) and run again"
        ) from None


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (and the device's peak allocation on CUDA), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"peak_rss_mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak
