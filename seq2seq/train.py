"""The training loop: Adam, gradient clipping, teacher-forcing and LR schedules, validation and early stopping.

Tracking stays outside: `fit` calls `log(epoch, metrics)` and `save_state(state)` once per epoch and returns the
best weights; the stage decides what those become (MLflow, files).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from seq2seq import distributed
from seq2seq.config import require
from seq2seq.data import Encoded
from seq2seq.distributed import SINGLE, Context
from seq2seq.metrics import exact_matches, token_matches
from seq2seq.model import Seq2Seq, sequence_loss


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


@dataclass
class EarlyStopping:
    """Tracks the best validation loss; `should_stop` after `patience` epochs without a min_delta improvement."""

    patience: int
    min_delta: float
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; True when it is a new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # CPU copy of the best weights
    stopped_early: bool = False


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm stopped being finite; nothing of that epoch is saved."""


def show_progress() -> bool:
    """Progress bars only for a person at a terminal, never in CI logs or DVC's captured output."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def _autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_split(
    model: Seq2Seq, data: Encoded, batch_size: int, device: torch.device, bf16: bool = False, ctx: Context = SINGLE
):
    """Teacher-forced loss and greedy-decoding token accuracy / exact match over a whole split.

    Under data parallelism each process evaluates its own contiguous share and the sums are added up.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = tokens = exact = torch.zeros((), dtype=torch.long, device=device)
    share = torch.arange(len(data)).tensor_split(ctx.world)[ctx.rank]
    for start in range(0, len(share), batch_size):
        src, src_len, tgt = data.batch(share[start : start + batch_size])
        src, tgt = src.to(device), tgt.to(device)
        with _autocast(device, bf16):
            logits = model(src, src_len, tgt[:, :-1])  # (B, T, V)
            n = (tgt[:, 1:] != model.pad_id).sum()
            loss_sum += sequence_loss(logits, tgt[:, 1:], model.pad_id) * n
            pred, _ = model.generate(src, src_len, max_len=tgt.shape[1])  # (B, T')
        hit, count = token_matches(pred, tgt[:, 1:], model.pad_id)
        correct, tokens = correct + hit.sum(), tokens + count.sum()
        exact = exact + exact_matches(pred, tgt[:, 1:], model.pad_id).sum()
    sums = distributed.sum_(torch.stack([loss_sum.double(), correct.double(), tokens.double(), exact.double()]), ctx)
    loss_total, correct_total, n_tokens, exact_total = sums.tolist()
    return {
        "loss": loss_total / n_tokens,
        "token_acc": correct_total / n_tokens,
        "exact_match": exact_total / len(data),
    }


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
        with _autocast(device, cfg.bf16):
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


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


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
) -> FitResult:
    """Train `model` (already on `device`) until max_epochs or early stopping.

    After every epoch, `save_state` receives everything needed to continue (weights, optimizer, RNG states, early
    stopping, history); `fit(..., resume=that_state)` continues from it exactly, so on the CPU a killed and
    resumed run ends with the same weights and metrics as one that was never interrupted.

    Under data parallelism (`ctx.world > 1`, every process calls `fit`) each global batch of `cfg.batch_size` is
    split across the processes and the loss is weighted so that the averaged gradient is the one of the whole
    batch's token mean; every process validates its share of `val`, so all of them take the same early-stopping
    decision. Pass `log` and `save_state` on rank 0 only.
    """
    # Every batch must split across the processes; with fewer examples than processes none would (and the epoch's
    # token count would be zero).
    require(
        len(train) >= ctx.world, "train.nproc", f"is {ctx.world} but the training split holds {len(train)} examples"
    )
    stepper = model
    if ctx.distributed:
        ids = [device.index] if device.type == "cuda" else None
        # DDP broadcasts rank 0's weights now and averages the gradients inside backward().
        stepper = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = adam(model.parameters(), cfg.lr)
    training_step_loss = training_loss(stepper, cfg, device)
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    shuffle = torch.Generator()
    result = FitResult()
    if resume is None:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks differ between processes, as they would in one batch
        shuffle.manual_seed(cfg.seed)  # the same order everywhere: every process splits the same global batch
        first_epoch = 1
    else:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"] if not ctx.distributed else resume["torch_rng_by_rank"][ctx.rank])
        shuffle.set_state(resume["shuffle_rng"])
        stopper = EarlyStopping(**resume["stopper"])
        result = FitResult(resume["history"], resume["best_epoch"], resume["best_model"])
        first_epoch = resume["epoch"] + 1
        if stopper.should_stop:
            result.stopped_early = True
            return result
    for epoch in range(first_epoch, cfg.max_epochs + 1):
        lr, tf = learning_rate(cfg, epoch), teacher_forcing_ratio(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started = time.perf_counter()
        # Running sums stay on the device: no .item() (a GPU sync) inside the step loop.
        loss_sum = torch.zeros((), device=device)
        norm_sum = torch.zeros((), device=device)
        n_tokens = torch.zeros((), dtype=torch.long, device=device)
        first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        order = torch.randperm(len(train), generator=shuffle)
        starts = range(0, len(train), cfg.batch_size)
        quiet = not show_progress() or not ctx.is_main
        steps_taken = 0
        for step, start in enumerate(tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=quiet)):
            index = order[start : start + cfg.batch_size]
            weight = 1.0
            if ctx.distributed:
                if len(index) < ctx.world:
                    continue  # a last batch too small to split: skipped by every process alike
                batch_tokens = int((train.tgt_len[index] - 1).sum())  # the global batch's target tokens
                index = index.tensor_split(ctx.world)[ctx.rank]
                # DDP averages gradients over processes; weighting each local token mean by its share of the
                # tokens makes that average the gradient of the global batch's token mean.
                weight = float((train.tgt_len[index] - 1).sum()) * ctx.world / batch_tokens
            src, src_len, tgt = train.batch(index, trim=not cfg.compile)
            src, tgt = src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = training_step_loss(src, src_len, tgt, tf)
            (loss * weight if ctx.distributed else loss).backward()
            # Clip by global norm: an LSTM's gradient can explode on an unlucky batch, and one huge Adam step
            # would undo many good ones. The returned norm is the one before clipping, which is what we log.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            # Checked on the device and read once per epoch: a per-step read would sync host and device every step.
            # The steps after a bad one update NaN weights, which the check below then keeps from being saved.
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
            first_bad_step = torch.where(bad & (first_bad_step < 0), step + 1, first_bad_step)
            n = (tgt[:, 1:] != model.pad_id).sum()
            loss_sum += loss.detach() * n
            norm_sum += norm
            steps_taken += 1
            n_tokens += n
        # --- once per epoch: health check, validation, state, log ---
        elapsed = time.perf_counter() - started
        distributed.sum_(loss_sum, ctx)
        distributed.sum_(n_tokens, ctx)
        if ctx.distributed:  # the earliest bad step of any process (-1: none)
            never = torch.iinfo(torch.long).max
            first_bad_step = distributed.min_(torch.where(first_bad_step > 0, first_bad_step, never), ctx)
            first_bad_step = torch.where(first_bad_step == never, -1, first_bad_step)
        if (bad_step := int(first_bad_step)) > 0:
            raise NonFiniteError(
                f"epoch {epoch}, step {bad_step}: the loss or the gradient norm is not finite; stopping without "
                "saving this epoch (try a lower train.lr or train.clip)"
            )
        val_metrics = evaluate_split(model, val, cfg.batch_size, device, cfg.bf16, ctx)
        row = {
            "train_loss": loss_sum.item() / n_tokens.item(),
            "val_loss": val_metrics["loss"],
            "val_token_acc": val_metrics["token_acc"],
            "val_exact_match": val_metrics["exact_match"],
            "grad_norm": norm_sum.item() / steps_taken,
            "lr": lr,
            "teacher_forcing": tf,
            "tokens_per_s": n_tokens.item() / elapsed,
            "epoch_time_s": elapsed,
        }
        result.history.append({"epoch": epoch, **row})
        if stopper.update(row["val_loss"], epoch):
            result.best_epoch, result.best_state = epoch, _cpu_copy(model.state_dict())
        result.stopped_early = stopper.should_stop
        log(epoch, row)  # before the state: a kill between the two repeats this epoch rather than losing it
        rng_by_rank = distributed.gather(torch.get_rng_state(), ctx)  # a collective: every process takes part
        if save_state is not None:
            save_state(
                {
                    "epoch": epoch,
                    "model": _cpu_copy(model.state_dict()),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": rng_by_rank[0],
                    "torch_rng_by_rank": rng_by_rank,
                    "shuffle_rng": shuffle.get_state(),
                    "stopper": asdict(stopper),
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_model": result.best_state,
                }
            )
        if result.stopped_early:
            break
    return result
