"""Export stage: the checkpoint -> a self-contained folder (greedy decoding as a torch.export program and as
ONNX, the vocabulary, the limits, a model card, the MLflow run reference), logged to the pipeline's MLflow run as
a pyfunc model (DataFrame `source` -> `prediction`)."""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq import tracking
from seq2seq.checkpoint import load_checkpoint
from seq2seq.cli import input_path, load_params_or_exit, output_path, params_option
from seq2seq.export import model_card, write_export
from seq2seq.files import InputError, atomic_dir, read_json
from seq2seq.params import Params

RUN_REF_FILE = "mlflow_run.json"


@click.command()
@params_option
@input_path("--checkpoint", "checkpoint_path")
@input_path("--run-ref", "run_ref")
@input_path("--train-metrics", "train_metrics")
@input_path("--eval-metrics", "eval_metrics")
@output_path("--out", "out_dir", directory=True)
def main(
    params_path: Path, checkpoint_path: Path, run_ref: Path, train_metrics: Path, eval_metrics: Path, out_dir: Path
) -> None:
    params = load_params_or_exit(params_path)
    try:
        export_stage(params, checkpoint_path, run_ref, train_metrics, eval_metrics, out_dir)
    except (InputError, tracking.TrackingError) as err:
        raise click.ClickException(str(err)) from None


def export_stage(
    params: Params, checkpoint_path: Path, run_ref: Path, train_metrics: Path, eval_metrics: Path, out_dir: Path
) -> None:
    model, vocab, _ = load_checkpoint(checkpoint_path, "cpu")
    evaluation = read_json(eval_metrics, "metrics file")
    if not isinstance(evaluation, dict) or not all(isinstance(v, dict) for v in evaluation.values()):
        raise InputError(f"{eval_metrics}: not the evaluate stage's metrics (split -> metric -> value)")
    flat_eval = {f"{split}_{k}": v for split, values in evaluation.items() for k, v in values.items()}
    # The sections that made this model: a change to any of them reruns an upstream stage, and so this one (the
    # gate's tolerances change nothing upstream, so the card would go stale on them).
    made_by = params.flat("data", "model", "train", "evaluate", "export")
    training = read_json(train_metrics, "metrics file")
    if not isinstance(training, dict):
        raise InputError(f"{train_metrics}: not the train stage's metrics (metric -> value)")
    card = model_card(made_by, training, flat_eval, params.export)
    # Any in-vocabulary sources will do, within the exported length limit (MLflow checks the example).
    width = params.export.max_src_len
    example = [" ".join(vocab.tokens[4 : 4 + min(5, width)]), " ".join(vocab.tokens[5 : 5 + min(2, width)])]

    with tracking.continue_run(run_ref, "export", inherit=("data", "model", "train", "evaluate")) as run:
        run.log_params(params.flat("export"))

        def fill(tmp: Path) -> None:
            write_export(model, vocab, params.export, tmp, card)
            run.write_reference(tmp / RUN_REF_FILE)
            run.log_pyfunc(tmp, example)

        atomic_dir(out_dir, fill)
    click.echo(f"exported to {out_dir}; pyfunc logged to run {run.run_id}")


if __name__ == "__main__":
    main()
