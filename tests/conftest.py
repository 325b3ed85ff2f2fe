"""The tests' fixtures (a tiny dataset, the default params, the tiny pipeline run once a session) and hooks (a
hermetic MLflow setting, a check that no test wrote into the repository's MLflow store); plain helpers live in
tests/helpers.py."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.data import build_vocab, encode_split, generate_splits
from tests.helpers import ROOT, tiny_data_config, tiny_repo

_STORE_BEFORE = pytest.StashKey[set[str]]()


def _store_listing() -> set[str]:
    """What the repository's own MLflow store holds (run folders under mlruns/, whether mlflow.db exists), and
    every other path git neither tracks nor would list inside an ignored folder (caches aside)."""
    runs = {p.name for p in (ROOT / "mlruns").iterdir()} if (ROOT / "mlruns").is_dir() else set()
    status = ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"]
    listed = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    strays = {line[3:] for line in listed if line[:2] in ("??", "!!") and "_cache" not in line}
    return runs | strays | ({"mlflow.db"} if (ROOT / "mlflow.db").exists() else set())


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STORE_BEFORE] = _store_listing()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a test wrote into the repository's MLflow store (a test that is not hermetic: its runs
    would show up in the user's `make ui`) or left anything else in the repository. Checked once, after every
    worker is done."""
    if hasattr(session.config, "workerinput") or _STORE_BEFORE not in session.config.stash:
        return
    new = sorted(_store_listing() - session.config.stash[_STORE_BEFORE])
    if new:
        print(f"\ntests wrote into the repository ({ROOT}), its MLflow store or elsewhere: {', '.join(new)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_outside_tracking_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's shell may point MLFLOW_TRACKING_URI at a real store (the README suggests it): no test may log
    there, so each starts without MLflow and DVC settings and sets its own."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(name)


# The files, longest first (their summed test times in make test), ahead of the rest: pytest-xdist hands out whole
# files (--dist loadfile) in the collection's order once its reordering is off (below). Its default, the files with
# the most tests first, left few-test long files to the end, where one worker ran them while the other sat idle;
# longest first leaves the short ones to even the workers out at the end. test_retrain goes second, out of turn: the
# other worker's first file must not wait for the tiny pipeline that test_experiments builds (conftest, below).
LONG_FIRST = (
    "test_experiments.py",  # 240 s
    "test_retrain.py",  # 57 s
    "test_pipeline.py",  # 127 s
    "test_store_faults.py",  # 125 s
    "test_team.py",  # 120 s
    "test_tracking.py",  # 66 s
    "test_pairs.py",  # 45 s
    "test_bad_inputs.py",  # 37 s
    "test_g2p.py",  # 33 s
    "test_distributed.py",  # 31 s
    "test_train.py",  # 25 s
    "test_bad_params.py",  # 22 s
    "test_export.py",  # 17 s
    "test_failures.py",  # 11 s; the rest take 5 s or less each
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test), share the cores between the workers: torch in each one taking all of them
    would have their threads spin against each other; and hand out the files in LONG_FIRST's order (the option of
    --no-loadscope-reorder, set here rather than in addopts, which would break a run with `-p no:xdist`)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def tiny_dataset():
    cfg = tiny_data_config()
    frames, _ = generate_splits(cfg)
    vocab = build_vocab(cfg)
    return vocab, {split: encode_split(frame, vocab) for split, frame in frames.items()}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The real pipeline (`dvc repro`) run once a session on the tiny profile, in a temp git + DVC repo with its
    MLflow store. Never changed: a test takes a copy (helpers.copy_repo).

    Under pytest-xdist the workers share it (a build is 40 s of CPU that the other worker's tests would use): the
    first to ask builds it in the temp folder above theirs, holding a lock; one that asks meanwhile waits for it
    (LONG_FIRST gives the second worker a file that needs no pipeline first)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return tiny_repo(tmp_path_factory.mktemp("tiny-pipeline"))
    shared = tmp_path_factory.getbasetemp().parent / "tiny-pipeline"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
        if not (shared / "built").exists():
            shutil.rmtree(shared / "repo", ignore_errors=True)  # what a failed build left
            tiny_repo(shared)
            (shared / "built").touch()
    return shared / "repo"


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())
