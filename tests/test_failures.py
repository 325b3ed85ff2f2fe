"""The train stage's failures: one clear line, exit 1, no outputs written, and the MLflow run marked FAILED."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from seq2seq import tracking
from seq2seq.train import NonFiniteError
from tests.helpers import ROOT, TINY, load_stage, stage_args

pytestmark = pytest.mark.slow  # the generate and train stages, in-process (train with its keeper process)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "lower train.batch_size"),
        (NonFiniteError("epoch 2, step 7: the loss or the gradient norm is not finite"), "epoch 2, step 7"),
    ],
)
def test_a_failed_training_exits_1_writes_nothing_and_fails_the_run(tmp_path, monkeypatch, error, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    generated = CliRunner().invoke(
        load_stage("generate"), stage_args("generate", params_path, tmp_path / "gen", tmp_path)
    )
    assert generated.exit_code == 0, generated.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the artifact root (mlruns/) too, not the cwd's

    stage = load_stage("train")

    def failing_fit(model, *args, **kwargs):
        # One good epoch first (logged, state saved), then the failure: the outputs of that epoch must not appear.
        kwargs["log"](1, {"train_loss": 1.0, "val_loss": 1.0})
        kwargs["save_state"]({"epoch": 1, "model": model.state_dict()})
        raise error

    monkeypatch.setattr("seq2seq.train.fit", failing_fit)  # the stage imports it when it runs
    out = tmp_path / "out"
    result = CliRunner().invoke(stage, stage_args("train", params_path, out, tmp_path / "gen" / "data"))
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    # The resumable state of the good epoch stays (a rerun continues from it); nothing else is written.
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"]
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs([tracking.experiment_id_of(env)])
    assert [run.info.status for run in runs] == ["FAILED"]
    assert runs[0].data.metrics["train/loss"] == 1.0  # the good epoch was logged
