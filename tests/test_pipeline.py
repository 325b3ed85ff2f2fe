"""End to end: the real `dvc repro` on a tiny profile in a temp copy of the repo, with a real MLflow store there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seq2seq.checkpoint import load_checkpoint
from seq2seq.params import load_params
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = {
    "data": {
        **{"num_symbols": 8, "min_len": 2, "max_len": 5, "long_max_len": 7},
        **{"n_train": 256, "n_val": 32, "n_test": 32, "n_test_long": 16},
    },
    "model": {"emb_dim": 16, "hidden_dim": 32, "num_layers": 1, "dropout": 0.0},
    "train": {"max_epochs": 3, "batch_size": 32, "tf_start": 1.0, "tf_end": 0.8, "tf_decay_epochs": 2},
}


def _run(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(CI="true", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _set_params(repo: Path, **changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC copy of the project (its tracked and untracked-but-not-ignored files) on the tiny profile."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    _set_params(repo, **TINY)
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], repo)
    _run(["dvc", "repro"], repo)
    return repo


@pytest.fixture(scope="module")
def client(repo):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo}/mlflow.db")


def test_outputs_are_written(repo):
    for split in ("train", "val", "test", "test_long"):
        assert (repo / "data" / f"{split}.parquet").is_file()
    data_metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert data_metrics["n_train"] == 256 and data_metrics["overlap_test"] == 0
    train_metrics = json.loads((repo / "metrics" / "train.json").read_text())
    assert {"val_loss", "val_exact_match", "best_epoch", "epochs_run"} <= set(train_metrics)
    history = (repo / "plots" / "train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss") and len(history) == 1 + train_metrics["epochs_run"]
    model, vocab, payload = load_checkpoint(repo / "models" / "model.pt")
    assert model.cfg.hidden_dim == 32 and len(vocab) == 12 and payload["epoch"] == train_metrics["best_epoch"]


def test_mlflow_run_holds_params_metrics_tags_and_artifacts(repo, client):
    ref = json.loads((repo / "models" / "mlflow_run.json").read_text())
    run = client.get_run(ref["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in load_params(repo / "params.yaml").flat().items()}
    epochs = json.loads((repo / "metrics" / "train.json").read_text())["epochs_run"]
    for key in ("train_loss", "val_loss", "val_exact_match", "grad_norm", "lr", "teacher_forcing", "tokens_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1)), key
    head = _run(["git", "rev-parse", "HEAD"], repo).strip()
    assert run.data.tags["git_commit"] == head and len(run.data.tags["data_digest"]) == 64
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"params.yaml", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss_curves.png"]
    assert run.info.artifact_uri.startswith((repo / "mlruns").as_uri())


def test_repro_reruns_exactly_what_changed(repo, client):
    runs_before = len(client.search_runs([ref_experiment(repo)]))
    assert "Data and pipelines are up to date" in _run(["dvc", "repro"], repo)

    _set_params(repo, train={"lr": 0.005})
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'train'" in out and "Running stage 'generate'" not in out

    _set_params(repo, data={"max_len": 6})
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'generate'" in out and "Running stage 'train'" in out
    assert len(client.search_runs([ref_experiment(repo)])) == runs_before + 2


def ref_experiment(repo: Path) -> str:
    return json.loads((repo / "models" / "mlflow_run.json").read_text())["experiment_id"]
