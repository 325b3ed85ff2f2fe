"""Export stage: the checkpoint -> a self-contained folder (greedy decoding as a torch.export program and as
ONNX, the vocabulary, the limits, a model card, the MLflow run reference), logged to the pipeline's MLflow run as
a pyfunc model (DataFrame `source` -> `prediction`)."""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq import tracking
from stages.common import input_path, output_path, params_option, stage

RUN_REF_FILE = "mlflow_run.json"


@stage
@params_option
@input_path("--checkpoint", "checkpoint_path")
@input_path("--run-ref", "run_ref")
@input_path("--train-metrics", "train_metrics")
@input_path("--eval-metrics", "eval_metrics")
@output_path("--out", "out_dir", directory=True)
def main(
    params_path: Path, checkpoint_path: Path, run_ref: Path, train_metrics: Path, eval_metrics: Path, out_dir: Path
) -> None:
    with tracking.Keeper() as keeper:  # MLflow's imports overlap the export's
        from seq2seq.checkpoint import load_checkpoint
        from seq2seq.export import model_card, read_metrics, write_export
        from seq2seq.files import atomic_dir
        from seq2seq.pairs import token_modes
        from seq2seq.params import load_params
        from seq2seq.vocab import untokenize

        params = load_params(params_path)
        model, vocab, payload = load_checkpoint(checkpoint_path, "cpu")
        training, evaluation = read_metrics(train_metrics, eval_metrics)
        # The sections that made this model: a change to any of them reruns an upstream stage, and so this one (the
        # gate's tolerances change nothing upstream, so the card would go stale on them).
        made_by = params.flat("data", "model", "train", "evaluate", "export")
        card = model_card(made_by, training, evaluation, params.export)
        # Any in-vocabulary sources will do, within the exported length limit (MLflow checks the example), written
        # as a user types them: `echo pipeline | seq2seq predict`, not `p i p e l i n e`.
        width, tokens = params.export.max_src_len, token_modes(params.data)
        spans = (vocab.tokens[4 : 4 + min(5, width)], vocab.tokens[5 : 5 + min(2, width)])
        example = [untokenize(" ".join(span), tokens[0]) for span in spans]

        with keeper.run("export", reference=run_ref, inherit=("data", "model", "train", "evaluate")) as run:
            run.log_params(params.flat("export"))

            def fill(tmp: Path) -> None:
                write_export(model, vocab, params.export, tmp, card, payload.get("trained_src_len"), tokens)
                tracking.write_reference(run, tmp / RUN_REF_FILE)
                run.log_model(tmp, example, evaluation)

            atomic_dir(out_dir, fill)
    click.echo(f"exported to {out_dir}; pyfunc logged to run {run.run_id}")


if __name__ == "__main__":
    main()
