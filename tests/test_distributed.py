"""Data-parallel training: the train stage with train.nproc=2 (torchrun, gloo, 2 CPU processes) against nproc=1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.tracking import registry
from tests.helpers import ROOT, TINY, run

pytestmark = pytest.mark.slow  # the stages as scripts, train under torchrun


def _train(tmp: Path, name: str, nproc: int) -> Path:
    """Run the train stage as a script (as DVC does) with its outputs in tmp/name; returns that folder."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    # Teacher forcing 1 and no dropout: no random draws in a step, so both runs compute the same gradients.
    params["train"].update(max_epochs=3, tf_start=1.0, tf_end=1.0, nproc=nproc)
    params_path = tmp / f"{name}.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    if not (tmp / "data").exists():
        run([sys.executable, "-m", "stages.generate", "--params", str(params_path), "--out", "data",
             "--metrics", "gen/data.json", "--lengths", "gen/lengths.csv"], tmp)  # fmt: skip
    out = tmp / name
    flags = ["checkpoint", "state", "run-ref", "metrics", "timing", "history"]
    files = ["model.pt", "state.pt", "run.json", "train.json", "timing.json", "history.csv"]
    paths = [arg for flag, file in zip(flags, files, strict=True) for arg in (f"--{flag}", str(out / file))]
    stage = [sys.executable, "-m", "stages.train", "--params", str(params_path), "--data", "data", *paths]
    run(stage, tmp, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")
    return out


def test_two_processes_train_like_one_and_only_rank_0_writes_and_logs(tmp_path):
    single = _train(tmp_path, "single", nproc=1)
    ddp = _train(tmp_path, "ddp", nproc=2)

    # The global batch is split and the averaged gradient is the whole batch's: the same training, up to the
    # order of floating-point sums.
    one, two = (json.loads((out / "train.json").read_text()) for out in (single, ddp))
    assert one.keys() == two.keys() and one["best_epoch"] == two["best_epoch"]
    for key in ("train_loss", "val_loss", "val_token_acc", "val_exact_match", "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    weights_one = torch.load(single / "model.pt", weights_only=True)["state_dict"]
    weights_two = torch.load(ddp / "model.pt", weights_only=True)["state_dict"]
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, atol=1e-4, rtol=1e-3)

    # Rank 0 saved every process's RNG state (a resume restores each), and logged exactly one run.
    state = torch.load(ddp / "state.pt", weights_only=True)
    assert len(state["torch_rng_by_rank"]) == 2 and state["complete"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    runs = registry.search_runs(env=env)
    assert len(runs) == 2  # one per stage execution, none from rank 1
    ddp_run = runs[runs["run_id"] == json.loads((ddp / "run.json").read_text())["run_id"]].iloc[0]
    assert ddp_run["params.train.nproc"] == "2" and ddp_run["tags.processes"] == "2"
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
