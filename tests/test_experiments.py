"""DVC experiments land in the main MLflow store exactly once, however they run: in a temp dir (the SQLite store
found through DVC_ROOT), over DVC's run-cache, queued in parallel through a tracking server (on PostgreSQL here;
tests/test_team.py and test_store_faults.py run one on SQLite). Runs on a tiny profile in a temp copy of the repo."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY, commit, copy_repo, env, postgres_cluster, run, server, set_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory) -> Path:
    repo = copy_repo(tiny_pipeline, tmp_path_factory.mktemp("experiments"))
    commit(repo, "baseline results")  # dvc.lock and metrics: what experiments are compared against
    return repo


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs_by_name(client) -> dict[str, list]:
    experiment = client.get_experiment_by_name("seq2seq")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_name: dict[str, list] = {}
    for r in runs:
        by_name.setdefault(r.info.run_name, []).append(r)
    return by_name


def _drain_queue(repo: Path, jobs: int, timeout: float = 600, **extra: str) -> None:
    run(["dvc", "queue", "start", "-j", str(jobs)], repo, **extra)
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    failed = [line.split()[1] for line in status.splitlines() if line.split()[-1:] == ["Failed"]]
    assert not failed, status + "".join(run(["dvc", "queue", "logs", name], repo) for name in failed)


def _experiment_names(repo: Path) -> set[str]:
    shown = json.loads(_exp_show(repo))
    return {rev["name"] for base in shown for exp in base.get("experiments") or [] for rev in exp["revs"]}


def _exp_show(repo: Path) -> str:
    result = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _assert_one_run_with_a_loadable_model(client, name: str) -> None:
    import mlflow
    import pandas as pd

    runs = _runs_by_name(client)[name]
    assert len(runs) == 1, f"{name}: {len(runs)} runs"
    run_ = runs[0]
    assert run_.info.status == "FINISHED" and run_.data.tags["dvc_exp_name"] == name
    assert {"test/exact_match", "summary/best_epoch", "val/loss"} <= set(run_.data.metrics)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(run_.data.tags["model_uri"])
    assert len(model.predict(pd.DataFrame({"source": ["1 2 3"]}))) == 1


def test_temp_experiment_lands_in_the_main_store_and_is_promoted_by_name(repo):
    run(["dvc", "exp", "run", "--temp", "-n", "in-temp", "-S", "train.lr=0.01"], repo)
    client = _client(f"sqlite:///{repo}/mlflow.db")
    _assert_one_run_with_a_loadable_model(client, "in-temp")
    # The variant a user chose, by its DVC name: not whatever export sits in the workspace
    (chosen,) = _runs_by_name(client)["in-temp"]
    out = run(["seq2seq", "promote", "--experiment", "in-temp"], repo)
    assert f"(run {chosen.info.run_id})" in out, out
    registered = client.search_model_versions("name = 'seq2seq'")
    assert chosen.info.run_id in {v.run_id for v in registered}
    out = run(["seq2seq", "promote", "--run", chosen.info.run_id], repo)  # the same, by run id
    assert "already is the champion" in out or "not promoted" in out, out
    out = run(["seq2seq", "promote", "--experiment", "no-such-exp"], repo, expect=1)
    assert "no finished run of DVC experiment 'no-such-exp' logged a model" in out and "Traceback" not in out
    out = run(["seq2seq", "promote", "--experiment", "in-temp", "--run", "x"], repo, expect=1)
    assert "name the candidate once" in out


def test_run_cache_never_skips_an_evaluation(repo):
    """evaluate.beam_size 2, then back to 1 on the same training run: the second is an evaluation that ran before
    (the baseline's), which DVC would restore from its run-cache, logging no MLflow run. Its persist output keeps
    evaluate out of the run-cache, so it runs and logs (tests/test_lock.py checks train and export have one too)."""
    client = _client(f"sqlite:///{repo}/mlflow.db")
    before = sum(len(v) for v in _runs_by_name(client).values())
    set_params(repo, evaluate={"beam_size": 2})
    assert "Running stage 'evaluate'" in run(["dvc", "repro", "evaluate"], repo)
    set_params(repo, evaluate={"beam_size": 1})  # the baseline's params again, as committed
    out = run(["dvc", "repro", "evaluate"], repo)
    assert "Stage 'train' didn't change" in out and "Running stage 'evaluate'" in out, out
    evaluation = json.loads((repo / "models" / "eval_run.json").read_text())["run_id"]
    assert client.get_run(evaluation).data.params["evaluate.beam_size"] == "1"
    assert sum(len(v) for v in _runs_by_name(client).values()) == before + 2


def test_queued_experiments_in_parallel_land_once_through_a_tracking_server_on_postgresql(repo, tmp_path):
    """`make server DB=postgres`'s own command on a throw-away PostgreSQL cluster; two queued experiments run side
    by side (`dvc queue start -j 2`) and each lands once, its params, metric history and model read back through
    the server; `seq2seq link` tags each with its DVC experiment's commit. (Queued runs find the SQLite store as
    temp ones do, from DVC's temp copies through DVC_ROOT: the temp experiment's test.)"""
    with postgres_cluster() as database:
        made = subprocess.run(
            ["make", "-s", "-n", "server", "DB=postgres", f"PG_URI={database}", f"ARTIFACTS={tmp_path / 'artifacts'}"],
            cwd=ROOT, env=env(), capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server" in made  # as server() starts it
        command = shlex.split(made[made.index("mlflow server") :].replace("\\\n", " "))
        assert command[command.index("--backend-store-uri") + 1] == database
        command = [*command[: command.index("--host")], "--workers", "1"]  # server() adds its own host and port
        with server(command, "/health", tmp_path / "server.log", seconds=180, cwd=tmp_path, env=env()) as uri:
            run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.005,0.02"], repo)
            _drain_queue(repo, jobs=2, MLFLOW_TRACKING_URI=uri)
            names = _experiment_names(repo) - {"in-temp"}
            assert len(names) == 2, names
            client = _client(uri)
            assert set(_runs_by_name(client)) == names  # a new database: these experiments' runs alone
            lrs = set()
            for name in names:
                _assert_one_run_with_a_loadable_model(client, name)
                (run_,) = _runs_by_name(client)[name]
                lrs.add(run_.data.params["train.lr"])
                assert run_.data.params["model.hidden_dim"] == "32"
                history = client.get_metric_history(run_.info.run_id, "train/loss")
                assert [m.step for m in history] == list(range(1, TINY["train"]["max_epochs"] + 1))
            assert lrs == {"0.005", "0.02"}
            assert len(list((tmp_path / "artifacts").rglob("model.onnx"))) == 2  # proxied: stored by the server
            out = run(["seq2seq", "link"], repo, MLFLOW_TRACKING_URI=uri)
            assert "tagged 2 runs of 2 experiments" in out, out
            others = _experiment_names(repo) - names  # the temp experiment's (test above): the SQLite store holds it
            assert not others or f"left alone, their runs are not in this store: {', '.join(others)}" in out, out
            commits = {r.data.tags.get("dvc_exp_commit") for n in names for r in _runs_by_name(client)[n]}
            assert None not in commits and len(commits) == 2
