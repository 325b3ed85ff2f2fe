"""Shared fixtures: tiny configs, a tiny dataset, and the stages loaded as click commands."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.data import DataConfig, build_vocab, encode_split, generate_splits
from seq2seq.model import ModelConfig
from seq2seq.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
_STORE_BEFORE = pytest.StashKey[set[str]]()


def _store_listing() -> set[str]:
    """What the repository's own MLflow store holds: run folders under mlruns/, and whether mlflow.db exists."""
    runs = {p.name for p in (ROOT / "mlruns").iterdir()} if (ROOT / "mlruns").is_dir() else set()
    return runs | ({"mlflow.db"} if (ROOT / "mlflow.db").exists() else set())


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STORE_BEFORE] = _store_listing()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a test wrote into the repository's MLflow store (a test that is not hermetic: its runs
    would show up in the user's `make ui`). Checked once, after every worker is done."""
    if hasattr(session.config, "workerinput") or _STORE_BEFORE not in session.config.stash:
        return
    new = sorted(_store_listing() - session.config.stash[_STORE_BEFORE])
    if new:
        print(f"\ntests wrote into the repository's MLflow store ({ROOT}): {', '.join(new)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_outside_tracking_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's shell may point MLFLOW_TRACKING_URI at a real store (the README suggests it): no test may log
    there, so each starts without MLflow and DVC settings and sets its own."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(name)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test), share the cores between the workers: torch in each one taking all of them
    would have their threads spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


def tiny_data_config(**overrides) -> DataConfig:
    values = dict(
        task="reverse", num_symbols=8, min_len=2, max_len=5, long_max_len=7,
        n_train=300, n_val=40, n_test=40, n_test_long=20, seed=0,
    )  # fmt: skip
    return DataConfig(**{**values, **overrides})


def tiny_model_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(emb_dim=16, hidden_dim=32, num_layers=2, dropout=0.0), **overrides})


def tiny_train_config(**overrides) -> TrainConfig:
    values = dict(
        seed=0, device="cpu", bf16=False, batch_size=32, max_epochs=3, lr=0.01, lr_schedule="cosine",
        lr_final_ratio=0.1, clip=1.0, tf_start=1.0, tf_end=0.5, tf_decay_epochs=2, patience=2, min_delta=0.0,
        system_metrics=False, nproc=1, compile=False,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_dataset():
    cfg = tiny_data_config()
    frames, _ = generate_splits(cfg)
    vocab = build_vocab(cfg)
    return vocab, {split: encode_split(frame, vocab) for split, frame in frames.items()}


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def load_stage_module(name: str):
    """stages/<name>.py as a module (stages are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_stage(name: str):
    """The click command of stages/<name>.py."""
    return load_stage_module(name).main
