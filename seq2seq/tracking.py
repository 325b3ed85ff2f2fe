"""MLflow tracking, the only module that imports mlflow (lazily, so the library imports without it).

The embedded default is a SQLite DB and an artifact folder at the project root, found through DVC_ROOT when DVC
runs the stage: queued and temp experiments run in throw-away copies of the repo, and a path relative to their
working directory would lose their runs. MLFLOW_TRACKING_URI overrides the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlruns"
DEFAULT_EXPERIMENT = "seq2seq"


def project_root(env: Mapping[str, str] = os.environ) -> Path:
    """The main repo root: DVC_ROOT inside a DVC stage (also in queued/temp experiments), else the cwd."""
    return Path(env.get("DVC_ROOT") or os.getcwd()).resolve()


def resolve_tracking_uri(env: Mapping[str, str] = os.environ) -> str:
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root(env) / DB_FILE}"


def resolve_artifact_location(env: Mapping[str, str] = os.environ) -> str | None:
    """Explicit artifact root for new experiments; None for a tracking server, which proxies artifacts itself."""
    if resolve_tracking_uri(env).startswith(("http://", "https://")):
        return None
    return (project_root(env) / ARTIFACT_DIR).as_uri()


def experiment_name(env: Mapping[str, str] = os.environ) -> str:
    return env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def run_tags(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Provenance tags: git commit, and the DVC experiment's name and baseline when DVC runs one."""
    tags = {}
    root = project_root(env)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    if commit.returncode == 0:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = commit.stdout.strip()
    for var, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if env.get(var):
            tags[tag] = env[var]
    return tags


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a SQLite store: processes creating one DB together race on its migration."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _client(env: Mapping[str, str]):
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(env)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        name = experiment_name(env)
        experiment = client.get_experiment_by_name(name)  # creates and migrates the DB on first contact
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(name, artifact_location=resolve_artifact_location(env))
        )
    return client, experiment_id


class Run:
    """One MLflow run of a pipeline execution; stages log through this, never through mlflow directly."""

    def __init__(self, client: Any, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One batched call per epoch: 20 single log_metric calls cost 10x one log_batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def write_reference(self, path: Path, env: Mapping[str, str] = os.environ) -> None:
        """The small file later stages read to append to this run."""
        path.parent.mkdir(parents=True, exist_ok=True)
        ref = {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": resolve_tracking_uri(env)}
        path.write_text(json.dumps(ref, indent=2) + "\n")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run is closed as KILLED instead of left RUNNING."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


@contextlib.contextmanager
def _lifecycle(client: Any, run_id: str) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    else:
        client.set_terminated(run_id, status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def start_run(run_name: str | None = None, env: Mapping[str, str] = os.environ) -> Iterator[Run]:
    """A new run, closed as FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM)."""
    client, experiment_id = _client(env)
    name = run_name or env.get("DVC_EXP_NAME") or None
    run = client.create_run(experiment_id, run_name=name, tags=run_tags(env))
    with _lifecycle(client, run.info.run_id):
        yield Run(client, run.info.run_id, experiment_id)


@contextlib.contextmanager
def resume_run(reference: Path, env: Mapping[str, str] = os.environ) -> Iterator[Run]:
    """Reopen the run named in `reference` (written by the train stage) so a later stage appends to it."""
    ref = json.loads(Path(reference).read_text())
    client, _ = _client({**env, "MLFLOW_TRACKING_URI": ref["tracking_uri"]})
    client.update_run(ref["run_id"], status="RUNNING")
    with _lifecycle(client, ref["run_id"]):
        yield Run(client, ref["run_id"], ref["experiment_id"])


def experiment_id(env: Mapping[str, str] = os.environ) -> str:
    """The id of this project's MLflow experiment (created if the store has none yet)."""
    return _client(env)[1]
