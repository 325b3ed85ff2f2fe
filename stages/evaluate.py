"""Evaluate stage: the checkpoint (config + vocabulary inside) + data/ -> test and test_long metrics, exact
match by source length (a DVC plot per split), and in the pipeline's MLflow run: those metrics, attention
heatmaps, a table of decoded samples, the per-length plot and the training curves (drawn here from the train
stage's history, so that training never imports matplotlib). Writes the run reference the export stage reads."""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq import tracking
from stages.common import input_path, output_path, params_option, stage

SPLITS = ("test", "test_long")


@stage
@params_option
@input_path("--data", "data_dir", directory=True)
@input_path("--checkpoint", "checkpoint_path")
@input_path("--run-ref", "run_ref")
@input_path("--history", "history_path")
@output_path("--out-run-ref", "out_run_ref")
@output_path("--metrics", "metrics_path")
@output_path("--by-length", "by_length_dir", directory=True)
def main(params_path: Path, data_dir: Path, checkpoint_path: Path, run_ref: Path, history_path: Path,
         out_run_ref: Path, metrics_path: Path, by_length_dir: Path) -> None:  # fmt: skip
    with tracking.Keeper() as keeper:  # MLflow's imports overlap the evaluation
        from seq2seq.checkpoint import load_checkpoint
        from seq2seq.data import dataset_digest, load_split
        from seq2seq.evaluation import attention_samples, evaluate
        from seq2seq.files import atomic_dir, write_json
        from seq2seq.params import load_params
        from seq2seq.plots import attention_heatmap, exact_match_by_length, loss_curves, read_history
        from seq2seq.train import resolve_device

        params = load_params(params_path)
        cfg = params.evaluate
        try:
            device = resolve_device(params.train.device)  # where the model trained
        except RuntimeError as err:  # trained on a GPU, evaluated where there is none (models/ from a DVC remote)
            device = resolve_device("auto")
            click.echo(f"warning: {err}; evaluating on {device}", err=True)
        model, vocab, _ = load_checkpoint(checkpoint_path, device)
        history = read_history(history_path)
        encoded = {split: load_split(data_dir, split, vocab) for split in SPLITS}
        words = params.data.task == "g2p"  # several pronunciations a word: WER and PER
        results = {split: evaluate(model, encoded[split], vocab, cfg, device, words) for split in SPLITS}
        tables = {split: result.by_length for split, result in results.items()}

        with keeper.run("evaluate", reference=run_ref, inherit=("data", "model", "train")) as run:
            run.log_params(params.flat("evaluate"))
            run.set_tags({tracking.TEST_DATA_TAG: dataset_digest(data_dir, "test*.parquet")})
            run.log_metrics({f"{split}/{k}": v for split, r in results.items() for k, v in r.metrics.items()})
            run.log_table(results["test"].predictions.head(cfg.n_samples), "predictions/test_samples.json")
            run.log_figure(exact_match_by_length(tables), "plots/exact_match_by_length.png")
            run.log_figure(loss_curves(history), "plots/loss_curves.png")
            test = encoded["test"]
            samples = attention_samples(model, test, vocab, cfg.n_attention_plots, cfg.max_extra_len, device)
            for i, (source, predicted, weights) in enumerate(samples):
                run.log_figure(attention_heatmap(source, predicted, weights), f"attention/attention_{i}.png")
            # The outputs last, once the run holds everything: a run that cannot be logged leaves none behind.
            run.sync()
            write_json(metrics_path, {split: result.metrics for split, result in results.items()})
            atomic_dir(by_length_dir, lambda tmp: [t.to_csv(tmp / f"{s}.csv", index=False) for s, t in tables.items()])
            tracking.write_reference(run, out_run_ref)
    summary = "  ".join(f"{s} exact match {r.metrics['exact_match']:.4f}" for s, r in results.items())
    click.echo(f"{summary}; run {run.run_id}")


if __name__ == "__main__":
    main()
