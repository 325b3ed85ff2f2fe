"""Train stage: data/ + params.yaml [model, train] -> the best checkpoint, the MLflow run reference, final
metrics (deterministic) and timing metrics, and the per-epoch history (a DVC plot). Opens the pipeline's MLflow
run; later stages append to it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import pandas as pd
import torch

from seq2seq import tracking
from seq2seq.checkpoint import save_checkpoint
from seq2seq.cli import load_params_or_exit, params_option
from seq2seq.data import dataset_digest, encode_split, read_split, read_vocab
from seq2seq.files import atomic_write, write_json
from seq2seq.model import Seq2Seq
from seq2seq.plots import loss_curves
from seq2seq.train import fit, resolve_device

# Timing varies run to run; it goes to MLflow and the timing file so that the metrics file stays byte-identical.
TIMING_KEYS = ("tokens_per_s", "epoch_time_s")


@click.command()
@params_option
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option("--checkpoint", "checkpoint_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--run-ref", "run_ref_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--timing", "timing_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--history", "history_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
def main(
    params_path: Path,
    data_dir: Path,
    checkpoint_path: Path,
    run_ref_path: Path,
    metrics_path: Path,
    timing_path: Path,
    history_path: Path,
) -> None:
    params = load_params_or_exit(params_path)
    try:
        device = resolve_device(params.train.device)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    vocab = read_vocab(data_dir)
    train_set = encode_split(read_split(data_dir, "train"), vocab)
    val_set = encode_split(read_split(data_dir, "val"), vocab)
    torch.manual_seed(params.train.seed)  # the weight init is part of the seeded run
    model = Seq2Seq(params.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(device)

    with tracking.start_run("train") as run:
        run.write_reference(run_ref_path)
        run.log_params(params.flat("data", "model", "train"))
        run.set_tags({"data_digest": dataset_digest(data_dir), "device": str(device)})
        run.log_artifact(params_path)

        def save_best(model: Seq2Seq, epoch: int, row: dict[str, float]) -> None:
            metrics = {k: v for k, v in row.items() if k not in TIMING_KEYS}  # keeps the file's bytes reproducible
            save_checkpoint(checkpoint_path, model, vocab, {"epoch": epoch, "metrics": metrics})

        def log(epoch: int, row: dict[str, float]) -> None:
            run.log_metrics(row, step=epoch)
            click.echo(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), err=True)

        result = fit(model, train_set, val_set, params.train, device, log=log, save_best=save_best)

        best = result.history[result.best_epoch - 1]
        summary = {k: v for k, v in best.items() if k not in TIMING_KEYS}
        summary.update(best_epoch=result.best_epoch, epochs_run=len(result.history))
        write_json(metrics_path, summary)
        total_s = sum(row["epoch_time_s"] for row in result.history)
        tokens = sum(row["tokens_per_s"] * row["epoch_time_s"] for row in result.history)
        write_json(timing_path, {"train_time_s": total_s, "tokens_per_s": tokens / total_s, "device": str(device)})
        columns = [k for k in result.history[0] if k not in TIMING_KEYS]
        history = pd.DataFrame(result.history)[columns]
        atomic_write(history_path, lambda tmp: history.to_csv(tmp, index=False, float_format="%.6g"))
        run.log_metrics({f"best_{k}": v for k, v in summary.items()})
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "loss_curves.png"
            loss_curves(result.history, png)
            run.log_artifact(png, "plots")
    click.echo(f"best epoch {result.best_epoch}: val exact match {best['val_exact_match']:.4f}; run {run.run_id}")


if __name__ == "__main__":
    main()
