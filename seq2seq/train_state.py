"""What `fit` (seq2seq/train.py) keeps across steps and epochs: an epoch's running sums, early stopping, the result
so far, and the resumable training state it saves after every epoch and restores from (on the CPU a resumed run
ends exactly as an uninterrupted one)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from seq2seq import distributed
from seq2seq.distributed import Context

if TYPE_CHECKING:
    from seq2seq.train import TrainConfig


class EpochSums:
    """One epoch's running training figures, on the device: reading one is a GPU sync, so they are read once, at
    the epoch's end, not after every step."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)  # token-mean losses times their batches' target tokens
        self.norm = torch.zeros((), device=device)  # gradient norms before clipping
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)  # -1: every step finite
        self.steps = 0

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor, tokens: torch.Tensor) -> None:
        # The steps after a bad one update NaN weights, which the end-of-epoch check then keeps from being saved.
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step)
        self.loss += loss.detach() * tokens
        self.norm += norm
        self.tokens += tokens
        self.steps += 1

    def read(self, ctx: Context) -> tuple[int, float, float, int]:
        """(first non-finite step of any process or -1, train loss, mean grad norm, tokens), over all processes."""
        distributed.sum_(self.loss, ctx)
        distributed.sum_(self.tokens, ctx)
        bad_step = distributed.earliest_step(self.first_bad_step, ctx)
        # Every process saw the same (averaged) gradients: its own norms are everyone's.
        return bad_step, self.loss.item() / self.tokens.item(), self.norm.item() / self.steps, self.tokens.item()


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


TIMING_KEYS = ("tokens_per_s", "epoch_time_s")  # per-epoch figures that vary run to run


@dataclass
class FitResult:
    """What `fit` returns, and what a resumed run picks up again."""

    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # CPU copy of the best weights
    stopped_early: bool = False
    last_state: dict[str, Any] = field(default_factory=dict)  # what save_state last received, or was resumed from

    def history_rows(self) -> list[dict[str, float]]:
        """The per-epoch history without the timing, which varies run to run (the metrics stay byte-identical)."""
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in self.history]

    def best_metrics(self) -> dict[str, float]:
        return self.history_rows()[self.best_epoch - 1]

    def counts(self) -> dict[str, int]:
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history)}

    def summary(self) -> dict[str, float]:
        """The best epoch's metrics and the epoch counts (the train stage's metrics file)."""
        return self.best_metrics() | self.counts()

    def timing(self) -> dict[str, float]:
        """The epochs' training time in all (validation excluded), and the tokens per second over it."""
        total_s = sum(row["epoch_time_s"] for row in self.history)
        tokens = sum(row["tokens_per_s"] * row["epoch_time_s"] for row in self.history)
        return {"train_time_s": total_s, "tokens_per_s": tokens / total_s}


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy on the CPU that training cannot change: the best weights, a saved state's."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def begin(
    model: nn.Module,
    optimizer: Optimizer,
    shuffle: torch.Generator,
    cfg: TrainConfig,
    resume: dict | None,
    ctx: Context,
) -> tuple[EarlyStopping, FitResult, int]:
    """Seed a fresh run, or restore a resumed one from the state `capture` made: returns the early stopping, the
    result so far and the first epoch to run."""
    if resume is None:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks differ between processes, as they would in one batch
        shuffle.manual_seed(cfg.seed)  # the same order everywhere: every process splits the same global batch
        return EarlyStopping(cfg.patience, cfg.min_delta), FitResult(), 1
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    torch.set_rng_state(resume["torch_rng"] if not ctx.distributed else resume["torch_rng_by_rank"][ctx.rank])
    shuffle.set_state(resume["shuffle_rng"])
    stopper = EarlyStopping(**resume["stopper"])
    result = FitResult(resume["history"], resume["best_epoch"], resume["best_model"], stopper.should_stop, resume)
    return stopper, result, resume["epoch"] + 1


def capture(
    epoch: int,
    model: nn.Module,
    optimizer: Optimizer,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
    result: FitResult,
    rng_by_rank: list[torch.Tensor],
) -> dict[str, Any]:
    """Everything `begin` needs to continue after `epoch`, exactly; rng_by_rank: every process's torch RNG state."""
    return {
        "epoch": epoch,
        "model": cpu_copy(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "torch_rng": rng_by_rank[0],
        "torch_rng_by_rank": rng_by_rank,
        "shuffle_rng": shuffle.get_state(),
        "stopper": asdict(stopper),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_model": result.best_state,
    }
