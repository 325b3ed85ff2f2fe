"""Tracking store faults cost one line naming the store, fast, never a finished training; no credential of the
store's URI reaches any output. Stages and `seq2seq` commands run as users run them, in subprocesses, on a copy of
the tiny pipeline's folder and store."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from seq2seq.config import TrackingError, redact
from tests.helpers import ROOT, TINY, copy_repo, env, free_port, server, set_params, stage_args

SECRET = "s3cr3t-T0KEN"


def test_credentials_are_redacted_from_every_uri_in_a_text():
    text = f"API request to http://alice:{SECRET}@mlflow.example.com:5000/api/2.0 and postgresql://u:{SECRET}@db/x"
    assert redact(text) == "API request to http://***@mlflow.example.com:5000/api/2.0 and postgresql://***@db/x"
    for kept in ("sqlite:////tmp/a@b/mlflow.db", "http://host/path@x", "models:/seq2seq@champion"):
        assert redact(kept) == kept
    assert SECRET not in str(TrackingError(f"MLflow store http://u:{SECRET}@h: refused"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The tiny params and generated data, with a store that has the project's experiment (as after a first run)."""
    work = tmp_path_factory.mktemp("faults")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, **TINY)
    set_params(work, train={"max_epochs": 40, "patience": 40})  # long enough to lock the store in the middle
    _stage("generate", work, stage_args("generate", work / "params.yaml", work / "gen", work))
    from seq2seq.tracking import experiment_id_of

    experiment_id_of({"DVC_ROOT": str(work)})
    return work


def _train_args(work: Path, out: str) -> list[str]:
    return stage_args("train", work / "params.yaml", work / out, work / "gen" / "data")


def _stage(name: str, cwd: Path, args: list[str], expect: int = 0, **extra: str) -> subprocess.CompletedProcess:
    """The stage run in `cwd` (the stages from this repository): what it writes there by mistake stays there."""
    extra.setdefault("DVC_ROOT", str(cwd))
    command = ["python", "-m", f"stages.{name}", *args]
    run_env = env(**extra, PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == expect, result.stderr
    return result


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's stderr has exactly one error line, no traceback and no secret; returns it."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and SECRET not in result.stderr, result.stderr
    return errors[0]


@pytest.fixture
def work(folder, tmp_path) -> Path:
    return copy_repo(folder, tmp_path)


@pytest.mark.slow
def test_an_unreachable_server_fails_stages_and_commands_in_one_line(work):
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _stage("train", work, _train_args(work, "out"), expect=1, MLFLOW_TRACKING_URI=uri)
    train_s = time.monotonic() - started
    line = _one_error_line(result)
    assert "MLflow store http://***@127.0.0.1:" in line and "Connection refused" in line, line
    assert not (work / "out").exists() or not any((work / "out").iterdir())
    started = time.monotonic()
    result = subprocess.run(
        ["seq2seq", "compare", "--html", str(work / "c.html")],
        cwd=work, env=env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    compare_s = time.monotonic() - started
    assert result.returncode == 1 and "Connection refused" in _one_error_line(result)
    # MLflow's own retries took 260 s here: bounded, both fail in seconds (a hang guard, not a timing test)
    assert train_s < 60 and compare_s < 60, (train_s, compare_s)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["corrupt database", "read-only database", "artifact folder is a file"])
def test_an_unusable_store_is_one_line_naming_it(work, fault):
    extra = {}
    if fault == "corrupt database":
        (work / "mlflow.db").write_bytes(b"not a database at all" * 300)
        said = "file is not a database"
    elif fault == "read-only database":  # SQLite's own read-only open: chmod means nothing to root
        extra["MLFLOW_TRACKING_URI"] = f"sqlite:///file:{work / 'mlflow.db'}?mode=ro&uri=true"
        said = "attempt to write a readonly database"
    else:
        shutil.rmtree(work / "mlruns", ignore_errors=True)  # no run has stored an artifact yet
        (work / "mlruns").write_text("")
        said = "Not a directory"
    before = (work / "mlflow.db").read_bytes()
    result = _stage("train", work, _train_args(work, "out"), expect=1, **extra)
    line = _one_error_line(result)
    assert line.startswith("Error: MLflow store sqlite:///") and said in line, line
    assert not (work / "out" / "model.pt").exists()
    if fault != "artifact folder is a file":  # a run opened there before its artifact failed, and was closed
        assert (work / "mlflow.db").read_bytes() == before
    # The first-contact lock goes beside the database, also for SQLite's URI form: it once went under `file:/...`
    # folders in the stage's working directory. (MLflow 3.17 still makes those folders, empty, there: its own
    # _make_parent_dirs_if_sqlite reads the URI form as a relative path.)
    assert not [p for p in (work / "file:").rglob("*") if p.is_file()]


def _stopped_then_resumed(work: Path, result: subprocess.CompletedProcess, said: str, db: Path, **extra: str):
    """The stage stopped mid-training in one line (`said`) with only its training state written; the rerun
    resumes that state in the same run, trains the epochs left, and the run's history (in the SQLite database
    `db`) holds every epoch once. Returns the rerun."""
    assert said in _one_error_line(result)
    out = work / "out"
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"], list(out.iterdir())
    stopped = int(re.findall(r"^epoch +(\d+)", result.stderr, re.MULTILINE)[-1])  # the last epoch logged
    assert 1 <= stopped < 39, result.stderr  # stopped in the middle, not at the end
    rerun = _stage("train", work, _train_args(work, "out"), **extra)
    resumed = int(re.search(r"resuming after epoch (\d+)", rerun.stderr).group(1))
    assert resumed == stopped, (stopped, rerun.stderr)
    assert f"epoch {stopped + 1:3d}" in rerun.stderr and (out / "model.pt").exists()  # its log failed: trained again
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    query = "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'train/loss' ORDER BY step"
    assert [step for (step,) in sqlite3.connect(db).execute(query, (run_id,))] == list(range(1, 41))
    status = sqlite3.connect(db).execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    assert status == ("FINISHED",)
    return rerun


@pytest.mark.slow
def test_a_store_locked_mid_training_stops_the_stage_and_the_rerun_resumes_in_the_same_run(work):
    """SQLite waits 20 s for a lock; held longer mid-training, that epoch's log fails and stops the stage there."""
    state = work / "out" / "state.pt"
    released = threading.Event()

    def hold_lock() -> None:
        while not state.exists():  # the run is open and an epoch is done
            time.sleep(0.05)
        with sqlite3.connect(work / "mlflow.db", isolation_level=None) as store:
            store.execute("BEGIN EXCLUSIVE")
            time.sleep(25)
            store.execute("COMMIT")
        released.set()

    locker = threading.Thread(target=hold_lock)
    locker.start()
    result = _stage("train", work, _train_args(work, "out"), expect=1)
    locker.join()
    assert released.is_set()
    _stopped_then_resumed(work, result, "database is locked", work / "mlflow.db")
    runs = sqlite3.connect(work / "mlflow.db").execute("SELECT status FROM runs").fetchall()
    assert ("RUNNING",) not in runs, runs  # the stopped stage ended its run once the lock was gone


@pytest.mark.slow
def test_a_server_stopping_mid_training_stops_the_stage_fast_and_the_rerun_resumes_in_the_same_run(work):
    """A tracking server killed mid-training: the stage fails at that epoch in one line naming the server, in
    seconds (MLflow's retries are bounded), not after training on; a rerun against the restarted server resumes."""
    backend = work / "server"
    backend.mkdir()
    cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{backend}/mlflow.db", "--workers", "1"]
    cmd += ["--artifacts-destination", str(backend / "artifacts")]
    with server(cmd, "/health", work / "server.log", seconds=180, cwd=work, env=env()) as uri:
        stage = subprocess.Popen(
            ["python", "-m", "stages.train", *_train_args(work, "out")],
            cwd=ROOT, env=env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while not (work / "out" / "state.pt").exists():  # the run is open and an epoch is logged
            assert stage.poll() is None, stage.communicate()
            time.sleep(0.05)
    stopped_at = time.monotonic()  # the server is gone: leaving `with` killed it
    stdout, stderr = stage.communicate(timeout=120)
    failed_s = time.monotonic() - stopped_at
    result = subprocess.CompletedProcess(stage.args, stage.returncode, stdout, stderr)
    assert result.returncode == 1 and failed_s < 30, (failed_s, stderr)  # the bound, not a timing figure
    assert "MLflow store http://127.0.0.1:" in _one_error_line(result)
    with server(cmd, "/health", work / "server2.log", seconds=180, cwd=work, env=env()) as uri:
        _stopped_then_resumed(work, result, "Connection refused", backend / "mlflow.db", MLFLOW_TRACKING_URI=uri)


@pytest.mark.slow
def test_a_killed_writer_leaves_no_temp_folder_for_long(tmp_path):
    """SIGKILL runs no cleanup: the next write of the same output removes what the killed one left."""
    from seq2seq.files import atomic_dir

    (tmp_path / ".export.abc123.tmp").mkdir()
    (tmp_path / ".export.abc123.tmp" / "model.onnx").write_text("half")
    atomic_dir(tmp_path / "export", lambda tmp: (tmp / "card.md").write_text("done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
