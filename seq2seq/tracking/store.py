"""Which MLflow store and experiment this project logs to, and the errors tracking raises.

The embedded default is a SQLite DB and an artifact folder at the project root, found through DVC_ROOT when DVC
runs the stage: queued and temp experiments run in throw-away copies of the repo, and a path relative to their
working directory would lose their runs. MLFLOW_TRACKING_URI overrides the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from seq2seq.config import TrackingError, redact
from seq2seq.files import InputError, read_json

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlruns"
DEFAULT_EXPERIMENT = "seq2seq"
# MLflow retries a failed HTTP request 7 times with a growing backoff, 120 s a try: a stage or command learned that
# the server was down after 260 s. Bounded (a user's own settings win): 4 s against a refused port, about 30 s
# against one that never answers. SQLite waits out a lock for 20 s itself (MLflow's busy_timeout).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


class RunUnavailable(TrackingError):
    """A run named by a file (a run reference, a training state) that the store does not hold (`missing`: another
    store tracked it), or that was deleted (restorable until purged)."""

    def __init__(self, run_id: str, uri: str, missing: bool) -> None:
        self.run_id, self.uri, self.missing = run_id, uri, missing
        where = "which {} does not hold" if missing else "which was deleted in {}"
        super().__init__(f"run {run_id}, {where.format(uri)}")

    def __reduce__(self):  # sent from the keeper process to the stage
        return RunUnavailable, (self.run_id, self.uri, self.missing)

    def remedy(self) -> str:
        return "" if self.missing else f"restore it (mlflow runs restore --run-id {self.run_id}) or "


def project_root(env: Mapping[str, str] = os.environ) -> Path:
    """The main repo root: DVC_ROOT inside a DVC stage (also in queued/temp experiments), else the nearest folder
    at or above the cwd that holds `.dvc/` (so `seq2seq compare` run from a subfolder finds the store rather than
    creating an empty one there), else the cwd."""
    if env.get("DVC_ROOT"):
        return Path(env["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / ".dvc").is_dir()), cwd)


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
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(env), capture_output=True, text=True)
    if commit.returncode == 0:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = commit.stdout.strip()
    for var, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if env.get(var):
            tags[tag] = env[var]
    if env.get("DVC_EXP_BASELINE_REV"):  # the run's description in the UI: what this variant changed
        tags["mlflow.note.content"] = describe_variant(env["DVC_EXP_BASELINE_REV"], Path("params.yaml"))
    return tags


def describe_variant(baseline: str, params_path: Path) -> str:
    """The params that differ between `params_path` and the baseline commit's, as `dvc exp run -S` set them."""
    from seq2seq.gate import flatten
    from seq2seq.params import read_yaml

    shown = subprocess.run(
        ["git", "show", "--end-of-options", f"{baseline}:{params_path}"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        return f"params.yaml against {baseline[:7]}: not readable there"
    before, now = flatten(read_yaml(shown.stdout) or {}), flatten(read_yaml(params_path.read_text()) or {})
    changes = [
        f"{k}={now.get(k)} (was {before.get(k)})" for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)
    ]
    return f"Against {baseline[:7]}: {', '.join(changes) or 'the same params'}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, also in SQLite's own URI form (`sqlite:///file:PATH?mode=ro&uri=true`,
    a read-only store), without SQLAlchemy's query options; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0].removeprefix("file:"))


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a SQLite store: processes creating one DB together race on its migration."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def cause(err: BaseException) -> str:
    """One line for a store's error: the database's own message rather than SQLAlchemy's SQL and links, the
    socket's rather than urllib3's retry story."""
    orig = getattr(err, "orig", None) or getattr(err.__cause__, "orig", None)  # a DBAPIError's driver error
    text = str(orig if orig is not None else getattr(err, "message", err)).strip()
    text = (text.splitlines() or [""])[0].removeprefix("(sqlite3.OperationalError) ")
    errno = re.search(r"\[Errno -?\d+\] [^\")]+", text)
    return redact(errno.group(0).rstrip("'") if errno else text[:300])


class _Reraised(logging.Filter):
    """MLflow logs a database error with its traceback, then raises it: the raise is reported, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def store_errors(func):
    """`func` with the store's failures (MLflow's, the database's, the artifact folder's) as one TrackingError line
    naming the store, not a traceback; other exceptions (bugs) go through as they are."""

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return func(*args, **kwargs)
        except (MlflowException, SQLAlchemyError, OSError) as err:
            raise TrackingError(f"MLflow store {resolve_tracking_uri()}: {cause(err)}") from None

    return wrapped


_RERAISED = _Reraised()


def open_store(env: Mapping[str, str] = os.environ) -> tuple[Any, str]:
    """(MlflowClient, the project experiment's id), creating the experiment (and a SQLite DB) on first use;
    TrackingError naming the store and the cause when it cannot be used."""
    if not sys.stderr.isatty():  # artifact progress bars are noise in DVC's and CI's logs
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for var, value in HTTP_LIMITS.items():
        os.environ.setdefault(var, value)
    logging.getLogger("mlflow.store.db.utils").addFilter(_RERAISED)
    uri = resolve_tracking_uri(env)
    try:
        return _open(uri, experiment_name(env), resolve_artifact_location(env))
    except Exception as err:  # a wrong URI, a server down, a read-only or corrupt DB, a folder where a file goes
        raise TrackingError(f"MLflow store {uri}: {cause(err)}") from None


def _open(uri: str, name: str, artifact_location: str | None) -> tuple[Any, str]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)  # creates and migrates a SQLite DB on first contact
        if experiment:
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:  # a server's other client created it first (no file lock across machines)
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client, client.get_experiment_by_name(name).experiment_id


def experiment_id_of(env: Mapping[str, str] = os.environ) -> str:
    """The id of this project's MLflow experiment (created if the store has none yet)."""
    return open_store(env)[1]


def active_run(client: Any, run_id: str, uri: str) -> Any:
    """The run `run_id` of the store at `uri`; RunUnavailable if it is absent or deleted."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RunUnavailable(run_id, uri, missing=True) from None
        raise
    if run.info.lifecycle_stage == "deleted":
        raise RunUnavailable(run_id, uri, missing=False)
    return run


def read_run_reference(path: Path) -> str:
    """The run id in a run reference a stage wrote (`write_reference`); TrackingError naming the file."""
    try:
        reference = read_json(path, "run reference")
    except InputError as err:
        raise TrackingError(str(err)) from None
    if not isinstance(reference, dict) or not isinstance(reference.get("run_id"), str):
        raise TrackingError(f"{path}: not a run reference (no run_id)")
    return reference["run_id"]
