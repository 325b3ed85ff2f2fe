"""Run the real stages as scripts in a scratch folder (its own data, params and MLflow store), for the
benchmarks that measure a whole stage: peak memory and the cost of logging."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_OUTPUTS = {
    "--checkpoint": "models/model.pt",
    "--state": "models/train_state.pt",
    "--run-ref": "metrics/mlflow_run.json",
    "--metrics": "metrics/train.json",
    "--timing": "metrics/train_timing.json",
    "--history": "plots/train_history.csv",
}


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def seed_size_params(epochs: int) -> dict:
    """The seed document's sizes (vocab 1000, emb 256, hidden 512, 2 layers, dropout 0.5, batch 64, sequences of
    length 20) on the copy task, 640 training examples (10 steps per epoch)."""
    params = copy.deepcopy(default_params())
    params["data"].update(
        task="copy", num_symbols=996, min_len=20, max_len=20, long_max_len=21,
        n_train=640, n_val=64, n_test=64, n_test_long=16,
    )  # fmt: skip
    params["model"].update(emb_dim=256, hidden_dim=512, num_layers=2, dropout=0.5)
    params["train"].update(batch_size=64, max_epochs=epochs)
    return params


def stage_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return {**env, "CI": "true", "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}


def prepare(folder: Path, params: dict) -> Path:
    """Write params.yaml into `folder` and generate its data there; returns the params file."""
    folder.mkdir(parents=True, exist_ok=True)
    params_path = folder / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "stages.generate", "--params", str(params_path), "--out", "data",
               "--metrics", "metrics/data.json", "--lengths", "plots/data_lengths.csv"]  # fmt: skip
    subprocess.run(command, cwd=folder, env=stage_env(folder), check=True, capture_output=True)
    return params_path


def train_command(params_path: Path) -> list[str]:
    args = [arg for flag, path in TRAIN_OUTPUTS.items() for arg in (flag, path)]
    return [sys.executable, "-m", "stages.train", "--params", str(params_path), "--data", "data", *args]
