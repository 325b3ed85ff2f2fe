"""Train stage: data/ + params.yaml [data, model, train] -> the best checkpoint, final metrics (deterministic),
timing metrics, the per-epoch history (a DVC plot), the MLflow run reference (a DVC metric, so `dvc exp show`
lists the run id) and the resumable training state.

Opens the pipeline's MLflow run; later stages append to it. The training state is saved after every epoch to a
`persist` output: after a kill, `dvc repro` resumes from the last complete epoch, in the same MLflow run.
(`persist` also keeps this stage out of DVC's run-cache, so every execution trains and logs a run.)

With `train.nproc > 1` the stage runs itself as nproc torchrun workers (seq2seq/distributed.py); every process trains
its share of each batch, and rank 0 alone writes the outputs and logs to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import click

# Light imports only: torch and the library are imported inside the functions, after main() has started the
# MLflow helper (see there).
from seq2seq import tracking
from seq2seq.cli import command_line, input_path, load_params_or_exit, output_path, params_option
from seq2seq.files import InputError

if TYPE_CHECKING:
    import torch

    from seq2seq.distributed import Context
    from seq2seq.model import Seq2Seq
    from seq2seq.params import Params
    from seq2seq.train import FitResult

# Timing varies run to run; it goes to MLflow and the timing file so that the metrics file stays byte-identical.
TIMING_KEYS = ("tokens_per_s", "epoch_time_s")
SECTIONS = ("data", "model", "train")


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (and the device's peak allocation on CUDA), in MiB."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"peak_rss_mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def code_files() -> list[Path]:
    """The code a training state was made by: this stage and the library."""
    here = Path(__file__).resolve()
    return [here, *sorted((here.parents[1] / "seq2seq").glob("*.py"))]


def fingerprint(params: Params, data_digest: str, code: list[Path], threads: int) -> str:
    """What a saved training state must match to be resumed: this stage's params, the exact data, the code (a
    state from other code may not load, or would finish a run that other code began) and the CPU thread count
    (another sums in another order, so the resumed run would not end as an uninterrupted one)."""
    digest = hashlib.sha256(json.dumps([params.flat(*SECTIONS), data_digest, threads], sort_keys=True).encode())
    for path in code:
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def resumable(state_path: Path, expected: str) -> dict | None:
    """The saved state if it belongs to an unfinished run of these params and data; else None (start fresh)."""
    from seq2seq.checkpoint import load_train_state

    try:
        state = load_train_state(state_path)
    except InputError as err:  # e.g. a disk that lost the last write: the state only saves time, start over
        click.echo(f"warning: ignoring the saved training state: {err}; training starts from epoch 1", err=True)
        return None
    if state is None or state.get("complete"):
        return None
    if state.get("fingerprint") != expected:
        # Said aloud: after a kill, an edit to the code or the params silently costing the epochs done would puzzle.
        click.echo(
            f"note: {state_path} is from a run with other params, data, code or thread count; training starts "
            "from epoch 1 in a new MLflow run",
            err=True,
        )
        return None
    return state


@click.command()
@params_option
@input_path("--data", "data_dir", directory=True)
@output_path("--checkpoint", "checkpoint_path")
@output_path("--state", "state_path")
@output_path("--run-ref", "run_ref_path")
@output_path("--metrics", "metrics_path")
@output_path("--timing", "timing_path")
@output_path("--history", "history_path")
def main(params_path: Path, data_dir: Path, **outputs: Path) -> None:
    # MLflow's helper process starts before this process imports torch and the library (the params import them):
    # its ~2 s of imports then run beside this single-threaded start instead of during training, when training
    # uses every core (benchmarks/logging_overhead.py). Under torchrun, rank 0 alone logs.
    helper = tracking.start_helper() if os.environ.get("RANK", "0") == "0" else None
    try:
        stage(params_path, data_dir, helper, Outputs(**outputs))
    finally:
        if helper is not None:  # unused if the stage stopped before training
            tracking.discard_helper(helper)


def stage(params_path: Path, data_dir: Path, helper: subprocess.Popen | None, out: Outputs) -> None:
    """Validate, then train here, or launch the torchrun workers (train.nproc > 1) that run this same command."""
    import torch

    from seq2seq import distributed
    from seq2seq.train import resolve_device

    params = load_params_or_exit(params_path)
    try:
        device = resolve_device(params.train.device)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    nproc = params.train.nproc
    if nproc > 1 and not distributed.launched():
        if helper is not None:  # the workers log; this launcher does not
            tracking.discard_helper(helper)
        if device.type == "cuda" and nproc > torch.cuda.device_count():
            raise click.ClickException(f"train.nproc is {nproc} but this machine has {torch.cuda.device_count()} GPUs")
        sys.exit(distributed.launch(nproc, command_line(__file__)))  # this same command, nproc times
    try:
        ctx, device = distributed.init(device, nproc)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    try:
        train(params, params_path, data_dir, device, ctx, out, helper)
    except (tracking.TrackingError, InputError) as err:  # missing or malformed data, an unusable store
        raise click.ClickException(str(err) if ctx.is_main else f"rank {ctx.rank}: {err}") from None
    except click.ClickException as err:
        if not ctx.is_main:  # every process may say it: say which
            err.message = f"rank {ctx.rank}: {err.message}"
        raise
    finally:
        distributed.shutdown()


def run_fit(model: Seq2Seq, train_set, val_set, params: Params, device: torch.device, **kwargs) -> FitResult:
    """`fit`, with its failures turned into one-line errors (a click exit 1, no traceback)."""
    import torch

    from seq2seq.config import ConfigError
    from seq2seq.train import NonFiniteError, fit

    try:
        return fit(model, train_set, val_set, params.train, device, **kwargs)
    except (NonFiniteError, ConfigError) as err:  # ConfigError: params that do not fit the data (train.nproc)
        raise click.ClickException(str(err)) from None
    except torch.OutOfMemoryError:
        raise click.ClickException(
            f"out of memory on {device} at train.batch_size={params.train.batch_size}: "
            "lower train.batch_size (or model sizes) and run again"
        ) from None


class Outputs(NamedTuple):
    """The stage's output files (dvc.yaml names them)."""

    checkpoint_path: Path
    state_path: Path
    run_ref_path: Path
    metrics_path: Path
    timing_path: Path
    history_path: Path


def train(
    params: Params,
    params_path: Path,
    data_dir: Path,
    device: torch.device,
    ctx: Context,
    out: Outputs,
    helper: subprocess.Popen | None,
) -> None:
    import pandas as pd
    import torch

    from seq2seq.checkpoint import save_checkpoint, save_train_state
    from seq2seq.data import dataset_digest, load_split, read_vocab
    from seq2seq.files import atomic_write, write_json
    from seq2seq.model import Seq2Seq

    vocab = read_vocab(data_dir)
    train_set = load_split(data_dir, "train", vocab)
    val_set = load_split(data_dir, "val", vocab)
    digest = dataset_digest(data_dir)
    expected = fingerprint(params, digest, code_files(), torch.get_num_threads())
    state = resumable(out.state_path, expected)
    torch.manual_seed(params.train.seed)  # the weight init is part of the seeded run
    model = Seq2Seq(params.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(device)
    if not ctx.is_main:  # a helper process: trains its share, writes nothing, logs nothing
        run_fit(model, train_set, val_set, params, device, log=lambda epoch, row: None, resume=state, ctx=ctx)
        return

    # MLflow runs in a helper process: importing it and opening the store would otherwise cost this process
    # several percent of a default-profile training (see benchmarks/logging_overhead.py).
    run_id = state["run_id"] if state else None
    with tracking.run_in_helper("train", run_id=run_id, process=helper) as run:
        if state:
            try:
                run.experiment_id  # noqa: B018 (waits until the helper has reopened the run, before any training)
            except tracking.RunUnavailable as err:  # any other failure of the store would fail a fresh start too
                raise click.ClickException(
                    f"{out.state_path} resumes MLflow {err}, so it cannot be reopened; "
                    f"{err.remedy()}delete {out.state_path} to train from scratch"
                ) from None
            click.echo(f"resuming after epoch {state['epoch']} (MLflow run {state['run_id']})", err=True)
            run.set_tags({"resumed_after_epoch": str(state["epoch"])})
        else:
            run.log_params(params.flat(*SECTIONS))
            # The thread count is part of what makes a CPU run byte-reproducible: another one sums in another order.
            tags = {"data_digest": digest, "device": str(device), "processes": str(ctx.world)}
            run.set_tags(tags | {"torch_threads": str(torch.get_num_threads())})
            run.log_artifact(params_path)
        last_state: dict = {}

        def save_state(epoch_state: dict) -> None:
            last_state.update(epoch_state, fingerprint=expected, run_id=run.run_id, complete=False)
            save_train_state(out.state_path, last_state)

        def log(epoch: int, row: dict[str, float]) -> None:
            run.log_metrics(row, step=epoch)
            click.echo(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), err=True)

        with run.system_metrics(params.train.system_metrics):
            result = run_fit(
                model, train_set, val_set, params, device, log=log, save_state=save_state, resume=state, ctx=ctx
            )
        run.flush()  # a logging failure stops the stage here, before any output is written
        run.write_reference(out.run_ref_path)

        best = result.history[result.best_epoch - 1]
        summary = {k: v for k, v in best.items() if k not in TIMING_KEYS}
        extra = {"epoch": result.best_epoch, "metrics": summary}
        save_checkpoint(out.checkpoint_path, model, vocab, extra, state_dict=result.best_state)
        save_train_state(out.state_path, {**last_state, "complete": True})
        best_metrics = {f"best_{k}": v for k, v in summary.items()}
        summary.update(best_epoch=result.best_epoch, epochs_run=len(result.history))
        write_json(out.metrics_path, summary)
        total_s = sum(row["epoch_time_s"] for row in result.history)
        tokens = sum(row["tokens_per_s"] * row["epoch_time_s"] for row in result.history)
        timing = {"train_time_s": total_s, "tokens_per_s": tokens / total_s, "device": str(device)}
        peak = peak_memory(device)
        write_json(out.timing_path, {**timing, "processes": ctx.world, **peak})
        columns = [k for k in result.history[0] if k not in TIMING_KEYS]
        history = pd.DataFrame(result.history)[columns]
        atomic_write(out.history_path, lambda tmp: history.to_csv(tmp, index=False, float_format="%.6g"))
        run.log_metrics(best_metrics | {"best_epoch": result.best_epoch, "epochs_run": len(result.history)} | peak)
    click.echo(f"best epoch {result.best_epoch}: val exact match {best['val_exact_match']:.4f}; run {run.run_id}")


if __name__ == "__main__":
    main()
