"""A team's experiments in one place: one bare git repository (the team's remote), one DVC remote (a local folder,
the same DVC code path as S3), one tracking server, and three clones standing in for three machines. README's team
section shows exactly these commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import commit, copy_repo, env, run, server

pytestmark = pytest.mark.slow


# Each clone is another person's machine: a git identity of its own, for the commits dvc exp run makes.
IDENTITY = {
    f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in (("NAME", "t"), ("EMAIL", "t@x"))
}


def _clone(team: Path, where: Path) -> Path:
    run(["git", "clone", "-q", str(team), str(where)], team.parent)
    return where


def _exp_show(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`'s experiments, by name."""
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env(), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    return {
        rev["name"]: rev
        for baseline in json.loads(shown.stdout)
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
    }


def test_three_clones_share_data_models_and_experiments_through_the_remotes(tiny_pipeline, tmp_path):
    team, storage = tmp_path / "team.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(team)], tmp_path)  # clones check out main
    store = tmp_path / "server"
    store.mkdir()
    cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--workers", "1"]
    cmd += ["--artifacts-destination", str(store / "artifacts")]
    with server(cmd, "/health", tmp_path / "server.log", seconds=180, cwd=tmp_path, env=env()) as uri:
        tracked = {"MLFLOW_TRACKING_URI": uri, **IDENTITY}
        # Clone A has trained (its `dvc repro` is the session's tiny pipeline, logged to its own store: the runs
        # this test follows are the variants below), sets the remotes up and shares the results: dvc push, git push.
        a = copy_repo(tiny_pipeline, tmp_path / "a")
        run(["dvc", "remote", "add", "-d", "storage", str(storage)], a)
        run(["git", "remote", "add", "origin", str(team)], a)
        commit(a, "trained")
        run(["dvc", "push"], a)
        run(["git", "push", "-q", "origin", "HEAD:main"], a)

        # Clone B gets data/ and models/ without training, and predicts.
        b = _clone(team, tmp_path / "b")
        run(["dvc", "pull"], b)
        assert (b / "models" / "export" / "model.onnx").is_file() and (b / "data" / "train.parquet").is_file()
        assert "up to date" in run(["dvc", "status"], b)  # nothing to retrain
        assert run(["seq2seq", "predict", "--model", "models/export"], b, stdin="1 2 3\n").strip()

        # A and B each run a variant, logged to the server, and push it.
        for clone, name, lr in ((a, "exp-a", "0.005"), (b, "exp-b", "0.02")):
            run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], clone, **tracked)
            run(["dvc", "exp", "push", "origin", name], clone)

        # Clone C pulls both and sees them, in DVC and in MLflow, linked both ways.
        c = _clone(team, tmp_path / "c")
        for name in ("exp-a", "exp-b"):
            run(["dvc", "exp", "pull", "origin", name], c)
        revs = _exp_show(c)
        assert {"exp-a", "exp-b"} <= set(revs), list(revs)
        run_ids = {
            n: revs[n]["data"]["metrics"]["metrics/mlflow_run.json"]["data"]["run_id"] for n in ("exp-a", "exp-b")
        }
        run(["seq2seq", "link"], c, **tracked)
        listed = run(["seq2seq", "compare", "--format", "csv"], c, **tracked)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for name in ("exp-a", "exp-b"):
            assert run_ids[name] in listed, listed
            tags = client.get_run(run_ids[name]).data.tags
            assert tags["dvc_exp_name"] == name and tags["dvc_exp_commit"] == revs[name]["rev"]


@pytest.mark.parametrize("remote", ["not configured", "not writable"])
def test_a_dvc_remote_that_cannot_take_the_push_fails_with_dvcs_error_and_loses_nothing(
    tiny_pipeline, tmp_path, remote
):
    repo = copy_repo(tiny_pipeline, tmp_path)
    outputs = sorted(p for folder in ("data", "models") for p in (repo / folder).rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in outputs}
    if remote == "not configured":
        push, said = ["dvc", "push", "-r", "team"], "remote 'team' doesn't exist"
    else:  # a folder that cannot be made (a file is in its way): root ignores chmod, not this
        (tmp_path / "occupied").write_text("a file, not a folder\n")
        run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "occupied" / "storage")], repo)
        push, said = ["dvc", "push"], "Not a directory"
    pushed = subprocess.run(push, cwd=repo, env=env(), capture_output=True, text=True)
    assert pushed.returncode != 0 and said in pushed.stderr, pushed.stdout + pushed.stderr
    assert {p: p.read_bytes() for p in outputs} == before  # nothing of the project's outputs lost
    assert "up to date" in run(["dvc", "status"], repo)
