"""Helpers of the end-to-end tests: a tiny profile, a temp git + DVC copy of the repo, commands run in it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import ROOT

TINY = {
    "data": {
        **{"num_symbols": 8, "min_len": 2, "max_len": 5, "long_max_len": 7},
        **{"n_train": 256, "n_val": 32, "n_test": 32, "n_test_long": 16},
    },
    "model": {"emb_dim": 16, "hidden_dim": 32, "num_layers": 1, "dropout": 0.0},
    "train": {
        **{"max_epochs": 3, "batch_size": 32, "tf_start": 1.0, "tf_end": 0.8, "tf_decay_epochs": 2},
        # Pinned, not inherited from params.yaml: the tests' results must not depend on the machine (a GPU would
        # take device auto, under bf16) or on a user's local edit of these switches.
        **{"device": "cpu", "bf16": False, "compile": False, "system_metrics": False, "nproc": 1},
    },
    "evaluate": {"batch_size": 64, "beam_size": 1, "max_extra_len": 3, "n_samples": 5, "n_attention_plots": 2},
    "export": {"max_src_len": 8, "max_tgt_len": 9},
}
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


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
