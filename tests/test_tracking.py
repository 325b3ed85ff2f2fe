"""Tracking: where the store resolves to, and the run lifecycle against a real SQLite MLflow store."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from seq2seq import tracking


def test_default_store_is_the_cwd_without_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri({}) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_artifact_location({}) == (tmp_path.resolve() / "mlruns").as_uri()


def test_a_subfolder_of_the_project_uses_the_projects_store(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "reports" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "reports" / "deep")
    assert tracking.resolve_tracking_uri({}) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_dvc_root_wins_over_the_cwd(tmp_path, monkeypatch):
    # Queued and temp experiments run in .dvc/tmp/exps/...; their runs must land in the main repo's store.
    work = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    env = {"DVC_ROOT": str(tmp_path)}
    assert tracking.resolve_tracking_uri(env) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_artifact_location(env) == (tmp_path.resolve() / "mlruns").as_uri()


def test_mlflow_tracking_uri_overrides_everything(tmp_path):
    env = {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5005"}
    assert tracking.resolve_tracking_uri(env) == "http://127.0.0.1:5005"
    assert tracking.resolve_artifact_location(env) is None  # the server proxies artifacts
    other = {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "sqlite:////elsewhere/x.db"}
    assert tracking.resolve_tracking_uri(other) == "sqlite:////elsewhere/x.db"
    assert tracking.resolve_artifact_location(other) == (tmp_path.resolve() / "mlruns").as_uri()


def test_dvc_experiment_tags(tmp_path):
    env = {"DVC_ROOT": str(tmp_path), "DVC_EXP_NAME": "fuzzy-cat", "DVC_EXP_BASELINE_REV": "abc123"}
    tags = tracking.run_tags(env)
    assert tags["dvc_exp_name"] == "fuzzy-cat" and tags["dvc_exp_baseline_rev"] == "abc123"
    assert "git_commit" not in tags  # tmp_path is no git repo


def test_library_imports_without_mlflow_or_dvc():
    blocker = "import sys; sys.modules.update(mlflow=None, dvc=None, ruamel=None)\n"  # none on the GPU machine
    imports = "import seq2seq.data, seq2seq.model, seq2seq.train, seq2seq.checkpoint, seq2seq.params, seq2seq.tracking"
    result = subprocess.run([sys.executable, "-c", blocker + imports], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_train_stage_loads_without_torch_so_its_helper_starts_first():
    """stages/train.py starts the MLflow helper in main(), before the params and the library import torch: the
    helper's imports then overlap the stage's start-up (benchmarks/logging_overhead.py). A top-level import of
    torch, pandas or the params would quietly undo that."""
    stage = Path(__file__).parents[1] / "stages" / "train.py"
    load = f"import runpy, sys; runpy.run_path({str(stage)!r}); print(sorted({{'torch', 'pandas'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    from mlflow.tracking import MlflowClient

    env = {"DVC_ROOT": str(root)}
    yield env, MlflowClient(tracking.resolve_tracking_uri(env))


def test_run_logs_params_metrics_with_steps_and_finishes(store, tmp_path, monkeypatch):
    env, client = store
    with tracking.start_run("train", env={**env, "DVC_EXP_NAME": "exp-one"}) as run:
        run.log_params({"model.hidden_dim": 64, "train.lr": 0.003})
        run.log_metrics({"train_loss": 2.0, "val_loss": 2.5}, step=1)
        run.log_metrics({"train_loss": 1.0, "val_loss": 1.5}, step=2)
        artifact = tmp_path / "note.txt"
        artifact.write_text("hello")
        run.log_artifact(artifact, "notes")
        run.write_reference(tmp_path / "run.json")
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED" and data.info.run_name == "exp-one"
    assert data.data.params == {"model.hidden_dim": "64", "train.lr": "0.003"}
    assert data.data.tags["dvc_exp_name"] == "exp-one"
    history = client.get_metric_history(run.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 1.5)]
    assert data.info.artifact_uri.startswith((Path(env["DVC_ROOT"]).resolve() / "mlruns").as_uri())
    assert [a.path for a in client.list_artifacts(run.run_id, "notes")] == ["notes/note.txt"]

    with tracking.continue_run(tmp_path / "run.json", "evaluate", ("model", "train"), env) as again:
        again.log_metrics({"test_exact_match": 0.5})
    assert again.run_id == run.run_id  # the first evaluation appends to the training run
    assert client.get_run(run.run_id).data.metrics["test_exact_match"] == 0.5
    assert client.get_run(run.run_id).info.status == "FINISHED"

    # Evaluating the same training run again must not overwrite its results: a new run continues it. Its new,
    # lower value must be the run's latest even when logged in the same millisecond as the copy (the clock frozen,
    # 1 s ahead): MLflow breaks (step, timestamp) ties by the higher value.
    frozen = time.time() + 1.0
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: frozen)
        with tracking.continue_run(tmp_path / "run.json", "evaluate", ("model", "train"), env) as third:
            third.log_metrics({"test_exact_match": 0.25})
    assert third.run_id != run.run_id
    assert client.get_run(run.run_id).data.metrics["test_exact_match"] == 0.5
    follow_up = client.get_run(third.run_id)
    assert follow_up.data.metrics["test_exact_match"] == 0.25
    # The per-epoch curves come along whole, not as their last points.
    assert [(m.step, m.value) for m in client.get_metric_history(third.run_id, "val_loss")] == [(1, 2.5), (2, 1.5)]
    assert follow_up.data.tags["continues_run"] == run.run_id and follow_up.data.params == data.data.params
    assert follow_up.info.run_name == "exp-one" and follow_up.info.status == "FINISHED"


@pytest.mark.parametrize("opener", [tracking.start_run, tracking.run_in_helper], ids=["in-process", "helper"])
@pytest.mark.parametrize(("error", "status"), [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_failed_or_interrupted_runs_are_never_left_running(store, opener, error, status):
    env, client = store
    with pytest.raises(error), opener("train", env=env) as run:
        raise error("boom")
    assert client.get_run(run.run_id).info.status == status


def test_processes_creating_a_new_store_together_do_not_race(tmp_path):
    """Several stages starting at once against a DB that does not exist yet (a queue started with -j N) must
    not race on MLflow's schema migration: the first contact is serialised by a file lock."""
    script = "import sys; from seq2seq import tracking; print(tracking.experiment_id_of({'DVC_ROOT': sys.argv[1]}))"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], [err.decode()[-2000:] for _, _, err in results]
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, the same id for all


def test_system_metrics_when_enabled(store):
    env, client = store
    with tracking.start_run("train", env=env) as run, run.system_metrics(True):
        deadline = time.monotonic() + 120  # MLflow samples every 5 s; a loaded machine may take longer
        while "system/cpu_utilization_percentage" not in client.get_run(run.run_id).data.metrics:
            assert time.monotonic() < deadline, "no system metrics logged in 120 s"
            time.sleep(0.5)
    with tracking.start_run("train", env=env) as quiet, quiet.system_metrics(False):
        pass
    assert not any(k.startswith("system/") for k in client.get_run(quiet.run_id).data.metrics)


def test_a_helper_process_logs_the_run(store, tmp_path):
    env, client = store
    artifact = tmp_path / "params.yaml"
    artifact.write_text("a: 1\n")
    with tracking.run_in_helper("train", env=env) as run:
        run.log_params({"train.lr": 0.003})
        run.log_artifact(artifact)
        artifact.unlink()  # logged as it was when log_artifact was called
        run.log_metrics({"val_loss": 2.5}, step=1)
        run.log_metrics({"val_loss": 1.5}, step=2)
        run.write_reference(tmp_path / "run.json")
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED" and data.data.params == {"train.lr": "0.003"}
    assert data.data.tags["stage.train"] == "done"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_loss")] == [(1, 2.5), (2, 1.5)]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["params.yaml"]

    with tracking.run_in_helper("train", run_id=run.run_id, env=env) as again:  # a resumed training
        again.log_metrics({"val_loss": 1.0}, step=3)
    assert again.run_id == run.run_id and client.get_run(run.run_id).info.status == "FINISHED"


def test_a_helper_started_ahead_opens_its_run_only_when_asked(tmp_path):
    """start_helper's process imports MLflow before it knows its run; one that is never asked opens no run and
    creates no store, and one that is asked logs its run like any helper."""
    env = {"DVC_ROOT": str(tmp_path)}
    unused = tracking.start_helper(env)
    unused.stdin.close()  # the stage stopped before training: its input closes before any message
    assert unused.wait(timeout=120) == 0
    tracking.discard_helper(unused)
    assert not (tmp_path / tracking.DB_FILE).exists()

    from mlflow.tracking import MlflowClient

    tracking.experiment_id_of(env)  # an existing store: the helper opens it before it is asked
    client = MlflowClient(tracking.resolve_tracking_uri(env))
    helper = tracking.start_helper(env)
    with tracking.run_in_helper("train", env=env, process=helper) as run:
        run.log_metrics({"val_loss": 1.0}, step=1)
    tracking.discard_helper(helper)  # done with: a no-op
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_loss")] == [(1, 1.0)]
    assert len(client.search_runs([run.experiment_id])) == 1


def _wait_while_running(client, run_id: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    return client.get_run(run_id).info.status


def test_a_helper_marks_the_run_killed_when_the_trainer_is_killed(store, tmp_path):
    env, client = store
    script = textwrap.dedent(f"""
        import time
        from seq2seq import tracking
        with tracking.run_in_helper("train", env={{"DVC_ROOT": {env["DVC_ROOT"]!r}}}) as run:
            print(run.run_id, flush=True)
            time.sleep(600)
    """)
    cmd = [sys.executable, "-c", script]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True) as trainer:
        run_id = trainer.stdout.readline().strip()
        assert client.get_run(run_id).info.status == "RUNNING"
        os.killpg(trainer.pid, signal.SIGKILL)  # its whole process group, as `kill -9 -PGID` or a CI timeout does
    assert _wait_while_running(client, run_id) == "KILLED"


@pytest.mark.parametrize("appends", [True, False], ids=["appending", "new-run"])
def test_a_stage_killed_while_it_continues_a_run_leaves_it_killed(store, tmp_path, appends):
    """Evaluate and export log in-process through continue_run: a SIGKILL there must not leave a run RUNNING."""
    env, client = store
    with tracking.start_run("train", env=env) as train:
        train.write_reference(tmp_path / "run.json")
    if not appends:  # evaluate ran on this training run before: the next evaluation is a new run
        with tracking.continue_run(tmp_path / "run.json", "evaluate", ("train",), env):
            pass
    script = textwrap.dedent(f"""
        import time
        from seq2seq import tracking
        env = {{"DVC_ROOT": {env["DVC_ROOT"]!r}}}
        with tracking.continue_run({str(tmp_path / "run.json")!r}, "evaluate", ("train",), env) as run:
            print(run.run_id, flush=True)
            time.sleep(600)
    """)
    cmd = [sys.executable, "-c", script]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True) as stage:
        run_id = stage.stdout.readline().strip()
        assert (run_id == train.run_id) == appends
        assert client.get_run(run_id).info.status == "RUNNING"
        os.killpg(stage.pid, signal.SIGKILL)
    assert _wait_while_running(client, run_id) == "KILLED"


def test_a_helper_that_cannot_open_the_store_fails_the_stage(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/file/mlflow.db", "DVC_ROOT": str(tmp_path)}
    expected = pytest.raises(tracking.TrackingError, match=r"MLflow: .*Error")
    with expected as raised, tracking.run_in_helper("train", env=env) as run:
        run.log_metrics({"loss": 1.0}, step=1)
        # Until the helper has answered (with its error): messages sent after that must not break the trainer.
        assert select.select([run._process.stdout], [], [], 120)[0], "the helper did not answer in 120 s"
        run.log_metrics({"loss": 0.5}, step=2)
        run.flush()  # the first wait on the helper raises its error
    assert "Broken pipe" not in str(raised.value)


def test_a_helper_gone_before_its_run_opens_is_an_error_that_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where HelperRun keeps its artifact copies
    helper = tracking.start_helper({"DVC_ROOT": str(tmp_path / "store")})
    helper.kill()
    helper.wait()
    with (
        pytest.raises(tracking.TrackingError, match="logging helper process exited"),
        tracking.run_in_helper("train", env={"DVC_ROOT": str(tmp_path / "store")}, process=helper),
    ):
        pass
    tracking.discard_helper(helper)
    assert not list(tmp_path.glob("seq2seq-artifacts-*"))


def test_the_helper_leaves_the_stages_process_group_but_not_its_session(tmp_path):
    """Its own group: `kill -9 -PGID` of the stage leaves it alive to close the run. The same session: under the
    kernel's autogroup scheduling a session of its own would make its nice 19 void (benchmarks/logging_overhead.py
    measured +8.4% wall time at the default profile that way)."""
    helper = tracking.start_helper({"DVC_ROOT": str(tmp_path)})
    try:
        assert os.getpgid(helper.pid) != os.getpgid(0)
        assert os.getsid(helper.pid) == os.getsid(0)
    finally:
        tracking.discard_helper(helper)


def test_a_killed_stages_watchdog_leaves_a_rerun_that_reopened_the_run_alone(store, tmp_path):
    """Kill evaluate, rerun it at once: the rerun reopens the same run before the first watchdog (a second or two
    importing MLflow) gets to it, and that watchdog must not mark the live run KILLED."""
    env, client = store
    with tracking.start_run("train", env=env) as train:
        train.write_reference(tmp_path / "run.json")
    script = textwrap.dedent(f"""
        import time
        from seq2seq import tracking
        env = {{"DVC_ROOT": {env["DVC_ROOT"]!r}}}
        with tracking.continue_run({str(tmp_path / "run.json")!r}, "evaluate", ("train",), env) as run:
            print(run.run_id, flush=True)
            time.sleep(600)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as first:
        assert first.stdout.readline().strip() == train.run_id
        first_token = client.get_run(train.run_id).data.tags[tracking.OWNER_TAG]
        (watchdog,) = _pids_with_argument(first_token)  # the first stage's watchdog (argv: run id, token)
        with tracking.continue_run(tmp_path / "run.json", "evaluate", ("train",), env) as rerun:
            assert rerun.run_id == train.run_id  # the first never finished: the rerun appends to the same run
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            # Until the first's watchdog has imported MLflow, looked at the run and exited: then the verdict.
            deadline = time.monotonic() + 120
            while Path(f"/proc/{watchdog}").exists() and _pids_with_argument(first_token):
                assert time.monotonic() < deadline, "the killed stage's watchdog did not exit in 120 s"
                time.sleep(0.1)
            assert client.get_run(train.run_id).info.status == "RUNNING"
    assert client.get_run(train.run_id).info.status == "FINISHED"


def _pids_with_argument(argument: str) -> list[int]:
    """The processes whose command line holds `argument` (Linux: /proc/<pid>/cmdline)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process exited meanwhile
            continue
    return pids
