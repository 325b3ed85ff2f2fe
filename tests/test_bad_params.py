"""A bad params.yaml stops `dvc repro` and `dvc exp run -S` at the check stage, before DVC deletes any stage's
outputs: the model, the metrics, the training state, the run reference and the MLflow store stay as they were."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.helpers import copy_repo, env

pytestmark = pytest.mark.slow

KEPT = ("models", "metrics", "plots", "data", "mlflow.db", "mlruns", "dvc.lock")


def _snapshot(repo: Path) -> dict[str, str]:
    """Every file of the outputs and the store, by content."""
    files = [p for name in KEPT for p in ([repo / name] if (repo / name).is_file() else (repo / name).rglob("*"))]
    return {p.relative_to(repo).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files if p.is_file()}


BAD = {
    # how params.yaml is broken, the command, what the one line names
    "a typo in a value": (lambda t: t.replace("  lr: 0.003\n", "  lr: 0.003x\n"), ["dvc", "repro"], "train.lr"),
    "an empty file": (lambda t: "", ["dvc", "repro"], "are missing from 'params.yaml'"),  # DVC's own refusal
    "an infinite rate": (lambda t: t.replace("  lr: 0.003\n", "  lr: .inf\n"), ["dvc", "repro"], "train.lr"),
    "a size of a few zeros too many": (
        lambda t: t.replace("  hidden_dim: ", "  hidden_dim: 1000000#"),
        ["dvc", "repro"],
        "model.hidden_dim",
    ),
    "an experiment's -S": (lambda t: t, ["dvc", "exp", "run", "-S", "train.lr=abc"], "train.lr: must be a number"),
}


def test_a_bad_param_stops_dvc_before_any_output_is_deleted(tiny_pipeline, tmp_path):
    repo = copy_repo(tiny_pipeline, tmp_path)
    good = (repo / "params.yaml").read_text()
    assert "  lr: 0.003\n" in good and "  hidden_dim: " in good
    before = _snapshot(repo)
    assert {"models/model.pt", "models/train_state.pt", "metrics/train.json", "metrics/mlflow_run.json"} <= set(before)
    for case, (edit, command, named) in BAD.items():
        (repo / "params.yaml").write_text(edit(good))
        result = subprocess.run(command, cwd=repo, env=env(), capture_output=True, text=True, check=False)
        # The check stage's one line (`Error: params.yaml: <key>: ...`), or DVC's own for a file it cannot use
        errors = [line for line in result.stderr.splitlines() if line.startswith(("Error: ", "ERROR: "))]
        assert result.returncode != 0, f"{case}: {result.stdout}{result.stderr}"
        assert named in errors[0] and "Traceback" not in result.stderr, f"{case}: {result.stderr}"
        assert "Running stage 'generate'" not in result.stdout + result.stderr, case
        assert _snapshot(repo) == before, f"{case}: an output or the store changed"
        (repo / "params.yaml").write_text(good)
    out = subprocess.run(["dvc", "status"], cwd=repo, env=env(), capture_output=True, text=True, check=True).stdout
    assert "Data and pipelines are up to date" in out, out  # the good params back: nothing to rerun
