"""The training loop: Adam, gradient clipping, teacher-forcing and LR schedules, validation and early stopping.

Tracking stays outside: `fit` calls `log(epoch, metrics)` and `save_state(state)` once per epoch and returns the
best weights; the stage decides what those become (MLflow, files). Data parallelism's plumbing (DDP, splitting a
batch, the collectives) lives in seq2seq/distributed.py; validation is `evaluation.score`, the test's scorer.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm

from seq2seq import distributed
from seq2seq.config import StageError, require
from seq2seq.data import Encoded
from seq2seq.distributed import SINGLE, Context
from seq2seq.evaluation import score
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.train_state import EpochSums, FitResult, begin, capture, cpu_copy


@dataclass(frozen=True)
class TrainConfig:
    """The `train` section of params.yaml."""

    seed: int
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool  # autocast to bfloat16 on CUDA; ignored on the CPU
    batch_size: int
    max_epochs: int
    lr: float
    lr_schedule: Literal["constant", "cosine"]
    lr_final_ratio: float  # cosine decays lr to lr * lr_final_ratio at max_epochs
    clip: float  # max global grad norm
    tf_start: float  # teacher-forcing ratio at epoch 1 ...
    tf_end: float  # ... decaying linearly to this ...
    tf_decay_epochs: int  # ... over this many epochs (0: constant tf_start)
    patience: int  # epochs without a val-loss improvement of min_delta before stopping
    min_delta: float
    system_metrics: bool  # sample CPU/memory/GPU usage into the MLflow run
    nproc: int  # > 1: data-parallel over this many processes via torchrun; batch_size stays the global batch
    compile: bool  # torch.compile the training step over static shapes; CUDA graphs on CUDA ("reduce-overhead")

    def __post_init__(self) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")
        require(self.batch_size >= self.nproc, "batch_size", f"must be >= nproc ({self.nproc}), got {self.batch_size}")
        require(self.max_epochs >= 1, "max_epochs", f"must be >= 1, got {self.max_epochs}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 < self.lr_final_ratio <= 1, "lr_final_ratio", f"must be in (0, 1], got {self.lr_final_ratio}")
        require(self.clip > 0, "clip", f"must be > 0, got {self.clip}")
        require(0 <= self.tf_start <= 1, "tf_start", f"must be in [0, 1], got {self.tf_start}")
        require(0 <= self.tf_end <= self.tf_start, "tf_end", f"must be in [0, tf_start], got {self.tf_end}")
        require(self.tf_decay_epochs >= 0, "tf_decay_epochs", f"must be >= 0, got {self.tf_decay_epochs}")
        require(self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        require(not (self.compile and self.nproc > 1), "compile", "is not supported with nproc > 1 yet")
        require(self.min_delta >= 0, "min_delta", f"must be >= 0, got {self.min_delta}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def teacher_forcing_ratio(cfg: TrainConfig, epoch: int) -> float:
    """Linear decay from tf_start (epoch 1) to tf_end (epoch 1 + tf_decay_epochs), constant after."""
    if cfg.tf_decay_epochs == 0:
        return cfg.tf_start
    progress = min(1.0, (epoch - 1) / cfg.tf_decay_epochs)
    return cfg.tf_start + (cfg.tf_end - cfg.tf_start) * progress


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Per-epoch LR: constant, or cosine from lr (epoch 1) to lr * lr_final_ratio (epoch max_epochs)."""
    if cfg.lr_schedule == "constant" or cfg.max_epochs == 1:
        return cfg.lr
    progress = (epoch - 1) / (cfg.max_epochs - 1)
    final = cfg.lr * cfg.lr_final_ratio
    return final + (cfg.lr - final) * 0.5 * (1 + math.cos(math.pi * progress))


class NonFiniteError(StageError):
    """The loss or the gradient norm stopped being finite; nothing of that epoch is saved."""


def show_progress() -> bool:
    """Progress bars only for a person at a terminal, never in CI logs or DVC's captured output."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def training_loss(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float | torch.Tensor], torch.Tensor]:
    """loss(src, src_len, tgt, teacher_forcing): the training step's forward and loss (autocast included).

    With `cfg.compile` it runs the static-shape forward (no packing, no host sync) through torch.compile; on
    CUDA in "reduce-overhead" mode, which replays forward and backward as CUDA graphs: a decoder step is dozens of
    small kernels, and at these sizes their launches, not the arithmetic, bound the eager step. Feed it batches of
    one shape (`Encoded.batch(..., trim=False)`) and src_len on the device; each new shape compiles once more.
    One whole graph or an error: a graph break (a host sync, say) would split the CUDA graph.
    """
    pad_id = model.module.pad_id if hasattr(model, "module") else model.pad_id  # model may be DDP-wrapped

    def loss(src, src_len, tgt, teacher_forcing):
        with distributed.autocast(device, cfg.bf16):
            logits = model(src, src_len, tgt[:, :-1], teacher_forcing, static=cfg.compile)  # (B, T, V)
            return sequence_loss(logits, tgt[:, 1:], pad_id)

    if not cfg.compile:
        return loss
    mode = "reduce-overhead" if device.type == "cuda" else None
    compiled = torch.compile(loss, mode=mode, dynamic=False, fullgraph=True)

    def step(src, src_len, tgt, teacher_forcing):
        # A ratio below 1 goes in as a tensor: one graph for every ratio of a schedule, not one per value. Filled
        # on the device (torch.full), not copied from the host, which would wait for the previous step to finish.
        tf = teacher_forcing if teacher_forcing >= 1.0 else torch.full((), teacher_forcing, device=device)
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are consumed by now
        # allow_rnn: Dynamo refuses any nn.LSTM module; the static path only reads its weights (`masked_lstm`).
        with torch._dynamo.config.patch(allow_rnn=True):
            return compiled(src, src_len.to(device, non_blocking=True), tgt, tf)

    return step


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where it has one (CPU and CUDA): one pass over each parameter where the plain
    implementation runs about ten elementwise ops per parameter tensor. Same update rule and defaults."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def fit(
    model: Seq2Seq,
    train: Encoded,
    val: Encoded,
    cfg: TrainConfig,
    device: torch.device,
    log: Callable[[int, dict[str, float]], None],
    save_state: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    ctx: Context = SINGLE,
    *,
    max_extra_len: int,
) -> FitResult:
    """Train `model` (already on `device`) until max_epochs or early stopping; validation decodes up to each
    batch's longest source + `max_extra_len` tokens (params.yaml's evaluate.max_extra_len, as the test does).

    After every epoch, `save_state` receives everything needed to continue (weights, optimizer, RNG states, early
    stopping, history); `fit(..., resume=that_state)` continues from it exactly, so on the CPU a killed and
    resumed run ends with the same weights and metrics as one that was never interrupted.

    Under data parallelism (`ctx.world > 1`, every process calls `fit`) each global batch of `cfg.batch_size` is
    split across the processes (`distributed.split_batch`); every process validates its share of `val`, so all of
    them take the same early-stopping decision. Pass `log` and `save_state` on rank 0 only.
    """
    # Every batch must split across the processes; with fewer examples than processes none would (and the epoch's
    # token count would be zero).
    require(
        len(train) >= ctx.world, "train.nproc", f"is {ctx.world} but the training split holds {len(train)} examples"
    )
    optimizer = adam(model.parameters(), cfg.lr)
    step_loss = training_loss(distributed.wrap(model, device, ctx), cfg, device)
    shuffle = torch.Generator()
    stopper, result, first_epoch = begin(model, optimizer, shuffle, cfg, resume, ctx)
    if result.stopped_early:  # resumed from the state of the epoch that stopped it
        return result
    quiet = not show_progress() or not ctx.is_main
    for epoch in range(first_epoch, cfg.max_epochs + 1):
        lr, tf = learning_rate(cfg, epoch), teacher_forcing_ratio(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started = time.perf_counter()
        sums = EpochSums(device)
        order = torch.randperm(len(train), generator=shuffle)
        starts = range(0, len(train), cfg.batch_size)
        for step, start in enumerate(tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=quiet), 1):
            index, weight = distributed.split_batch(order[start : start + cfg.batch_size], train.tgt_len, ctx)
            if index is None:
                continue  # a last batch too small to split between the processes
            src, src_len, tgt = train.batch(index, trim=not cfg.compile)
            src, tgt = src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(src, src_len, tgt, tf)
            (loss * weight).backward()  # weight: this process's share of the batch's tokens (exactly 1 alone)
            # Clip by global norm: an LSTM's gradient can explode on an unlucky batch, and one huge Adam step
            # would undo many good ones. The returned norm is the one before clipping, which is what we log.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            sums.add(step, loss, norm, (tgt[:, 1:] != model.pad_id).sum())

        # --- once per epoch: health check, validation, early stopping, state, log ---
        elapsed = time.perf_counter() - started
        bad_step, train_loss, grad_norm, tokens = sums.read(ctx)
        if bad_step > 0:
            raise NonFiniteError(
                f"epoch {epoch}, step {bad_step}: the loss or the gradient norm is not finite; stopping without "
                "saving this epoch (try a lower train.lr or train.clip)"
            )
        val_metrics = score(model, val, cfg.batch_size, max_extra_len, device, bf16=cfg.bf16, ctx=ctx).metrics
        row = {
            "train_loss": train_loss,
            "val_loss": val_metrics["loss"],
            "val_token_acc": val_metrics["token_acc"],
            "val_exact_match": val_metrics["exact_match"],
            "grad_norm": grad_norm,
            "lr": lr,
            "teacher_forcing": tf,
            "tokens_per_s": tokens / elapsed,
            "epoch_time_s": elapsed,
        }
        result.history.append({"epoch": epoch, **row})
        if stopper.update(row["val_loss"], epoch):
            result.best_epoch, result.best_state = epoch, cpu_copy(model.state_dict())
        result.stopped_early = stopper.should_stop
        log(epoch, row)  # before the state: a kill between the two repeats this epoch rather than losing it
        rng_by_rank = distributed.gather(torch.get_rng_state(), ctx)  # a collective: every process takes part
        if save_state is not None:
            result.last_state = capture(epoch, model, optimizer, shuffle, stopper, result, rng_by_rank)
            save_state(result.last_state)
        if result.stopped_early:
            break
    return result
