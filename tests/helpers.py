"""Helpers of the tests: the tiny profile and the unit tests' configs built from it, the stages as click commands,
and for the end-to-end tests a temp git + DVC copy of the repo and commands run in it."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from seq2seq.data import DataConfig
from seq2seq.model import ModelConfig
from seq2seq.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# The tiny profile, as a partial params file. PyYAML rather than seq2seq.params.read_yaml (YAML 1.2): the GPU
# machine's image has no ruamel, and the profile holds no value that the two read differently.
TINY = yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text())
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def tiny_params() -> dict:
    """params.yaml with the tiny profile merged over it, section by section."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {section: {**values, **TINY.get(section, {})} for section, values in params.items()}


def tiny_data_config(**overrides) -> DataConfig:
    # Split sizes that are not multiples of the batch size (32, where the profile's are): training and evaluation
    # then run a last, smaller batch (and the compiled step compiles once more for it).
    sizes = dict(n_train=300, n_val=40, n_test=40, n_test_long=20)
    return DataConfig(**{**tiny_params()["data"], **sizes, **overrides})


def tiny_model_config(**overrides) -> ModelConfig:
    # Two layers where the profile has one: the unit tests exercise the stacked LSTM (the states handed between
    # layers, the dropout between them), which a single layer never runs.
    return ModelConfig(**{**tiny_params()["model"], "num_layers": 2, **overrides})


def tiny_train_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**tiny_params()["train"], **overrides})


def load_stage_module(name: str):
    """The module of stages/<name>.py (as dvc.yaml runs it: `python -m stages.<name>`)."""
    return importlib.import_module(f"stages.{name}")


def load_stage(name: str):
    """The click command of stages/<name>.py."""
    return load_stage_module(name).main


def stage_args(stage: str, params: Path, out: Path, data: Path) -> list[str]:
    """Every required option of a stage, all outputs under `out`."""
    args = ["--params", str(params), "--metrics", str(out / "metrics.json")]
    if stage == "generate":
        return [*args, "--out", str(out / "data"), "--lengths", str(out / "lengths.csv")]
    outputs = {"--checkpoint": "model.pt", "--state": "state.pt", "--run-ref": "run.json", "--timing": "t.json"}
    outputs["--history"] = "h.csv"
    return [*args, "--data", str(data), *(x for opt, name in outputs.items() for x in (opt, str(out / name)))]


def env(**extra: str) -> dict[str, str]:
    """This environment without MLflow/DVC settings, the venv first on PATH, CI=true (no progress bars), torch
    on one thread unless OMP_NUM_THREADS says otherwise: the tiny profile gains nothing from more, and test files
    run side by side (make test) would have each stage's threads fight over the same cores."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    base.setdefault("OMP_NUM_THREADS", "1")
    base.update(CI="true", PATH=f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}", **extra)
    return base


def run(cmd: list[str], cwd: Path, expect: int = 0, stdin: str | None = None, **extra: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env(**extra), input=stdin, capture_output=True, text=True, check=False)
    assert result.returncode == expect, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def set_params(repo: Path, **changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_repo(where: Path, run_pipeline: bool = True) -> Path:
    """A git + DVC copy of the project (tracked and untracked-but-not-ignored files) on the tiny profile,
    committed, with the pipeline run once (the baseline) unless run_pipeline is False."""
    repo = where / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    set_params(repo, **TINY)
    run(["git", "init", "-q"], repo)
    commit(repo, "tiny profile")
    if run_pipeline:
        run(["dvc", "repro"], repo)
    return repo


def copy_repo(base: Path, where: Path) -> Path:
    """A copy of `base` (a tiny_repo, such as conftest's `tiny_pipeline`, built once a session; or any folder of
    stage outputs with its store) at where/repo, to change at will. Everything comes along: git, DVC's cache
    (.dvc/cache) and the MLflow store (mlflow.db, mlruns/).

    The store records absolute locations (the experiment's artifact root, each run's and each logged and registered
    model's, in mlflow.db and in each model's MLmodel): they are moved into the copy, and the copy is checked to
    name the original in no link, no text file and not in its store, so that a test on it neither writes into the
    original, which other tests copy, nor reads its results from there. (Binary outputs keep the source paths that
    torch.export and ONNX record in their stack traces: a record of where they were made, read by nothing.)
    """
    base, repo = base.resolve(), (where / "repo").resolve()
    old, new = str(base), str(repo)
    shutil.copytree(base, repo, symlinks=True)
    if (repo / "mlflow.db").exists():
        with contextlib.closing(sqlite3.connect(repo / "mlflow.db")) as store:
            _replace_in_every_text(store, old, new)
    for mlmodel in (repo / "mlruns").rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text().replace(old, new))
    named = [
        path.relative_to(repo).as_posix()
        for path in repo.rglob("*")
        if (os.readlink(path).startswith(old) if path.is_symlink() else path.is_file() and _names(path, old))
    ]
    assert not named, f"the copy of {base} still names it in: {named}"
    return repo


def _names(path: Path, old: str) -> bool:
    """Whether a text file, or the store's database, holds `old`."""
    data = path.read_bytes()
    if old.encode() not in data:
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return path.name == "mlflow.db"
    return True


def _replace_in_every_text(store: sqlite3.Connection, old: str, new: str) -> None:
    """Replace `old` by `new` in every text value of every table (whatever MLflow's schema calls its path columns),
    then VACUUM: no page keeps the old value."""
    tables = [name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    with store:
        for table in tables:
            for column in [f'"{row[1]}"' for row in store.execute(f'PRAGMA table_info("{table}")')]:
                where = f"typeof({column}) = 'text' AND instr({column}, ?) > 0"
                store.execute(f'UPDATE "{table}" SET {column} = replace({column}, ?, ?) WHERE {where}', (old, new, old))
    store.execute("VACUUM")


def commit(repo: Path, message: str) -> None:
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", message], repo)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], health: str, log: Path, attempts: int = 3, seconds: float = 120, **popen):
    """Run `cmd + --host 127.0.0.1 --port P` until `health` answers; yields its base URL, stops it on exit.

    A free port is released before the server binds it, so a parallel test worker can take it in between: a server
    that dies of that is started again on another port, rather than failing the test.
    """
    # Without MLflow's job runner, as make server and make ui run it (Makefile: SERVE)
    popen["env"] = {**popen.get("env", os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for attempt in range(attempts):
        port = free_port()
        with log.open("w") as out:
            process = subprocess.Popen(
                [*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, **popen
            )
        try:
            try:
                wait_for(f"http://127.0.0.1:{port}{health}", process, log, seconds)
            except AssertionError:
                if process.poll() is not None and "in use" in log.read_text() and attempt + 1 < attempts:
                    continue  # the port went to someone else: try another
                raise
            yield f"http://127.0.0.1:{port}"
            return
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Poll `url` until it answers; fail early with the server's log if the process died."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s:\n{log.read_text()}"
            time.sleep(1)


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: on PATH, or where Debian's packages put them (not on PATH)."""
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1:]), None)
    assert found, "PostgreSQL is not installed (initdb not found); .ci/run installs it: apt-get install postgresql"
    return Path(found).resolve().parent


@contextlib.contextmanager
def postgres_cluster():
    """A throw-away PostgreSQL cluster on a free loopback port, its socket in its own folder; yields its URI. The
    server refuses to run as root, so as root the cluster belongs to `nobody`, in a folder under /tmp (pytest's
    temp folders are root's alone)."""
    import pwd
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user: dict = {"cwd": folder}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user |= {
            "user": nobody.pw_uid,
            "group": nobody.pw_gid,
            "env": {"PATH": os.environ["PATH"], "HOME": str(folder)},
        }
    bindir, data, port = postgres_bin(), folder / "data", free_port()
    initdb = [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(initdb, check=True, capture_output=True, **as_user)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [bindir / "pg_ctl", "-D", data, "-l", folder / "server.log"]
    started = subprocess.run([*pg_ctl, "-o", options, "-w", "start"], capture_output=True, text=True, **as_user)
    assert started.returncode == 0, started.stdout + started.stderr + (folder / "server.log").read_text()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, **as_user)
        shutil.rmtree(folder, ignore_errors=True)
