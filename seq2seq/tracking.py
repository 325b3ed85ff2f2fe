"""MLflow tracking, the only module that imports mlflow (lazily, so the library imports without it).

The embedded default is a SQLite DB and an artifact folder at the project root, found through DVC_ROOT when DVC
runs the stage: queued and temp experiments run in throw-away copies of the repo, and a path relative to their
working directory would lose their runs. MLFLOW_TRACKING_URI overrides the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seq2seq.files import InputError, read_json, write_json

if TYPE_CHECKING:
    import pandas as pd

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlruns"
DEFAULT_EXPERIMENT = "seq2seq"
REGISTERED_MODEL = "seq2seq"
CHAMPION = "champion"
STAGE_TAG = "stage"  # stage.<name> = done once a stage has logged to a run
MODEL_URI_TAG = "model_uri"  # the pyfunc the export stage logged
OWNER_TAG = "stage_owner"  # a token of the stage process that holds the run open (see `_watchdog`)


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
    if not sys.stderr.isatty():  # artifact progress bars are noise in DVC's and CI's logs
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(env)
    name = experiment_name(env)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)  # creates and migrates a SQLite DB on first contact
        if experiment:
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(name, artifact_location=resolve_artifact_location(env))
        except MlflowException as err:  # a server's other client created it first (no file lock across machines)
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client, client.get_experiment_by_name(name).experiment_id


class Run:
    """One MLflow run of a pipeline execution; stages log through this, never through mlflow directly."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self.client, self.run_id, self.experiment_id, self.tracking_uri = client, run_id, experiment_id, tracking_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, at_ms: int | None = None) -> None:
        """One batched call per epoch: 20 single log_metric calls cost 10x one log_batch."""
        from mlflow.entities import Metric

        now = at_ms or int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def write_reference(self, path: Path) -> None:
        """The small file the next stage reads to append to this run."""
        write_json(path, {"experiment_id": self.experiment_id, "run_id": self.run_id})

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool) -> Iterator[None]:
        """CPU, memory (and GPU, where present) usage sampled into the run while the block runs."""
        if not enabled:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_table(self, frame: Any, artifact_file: str) -> None:
        """A DataFrame as a table artifact the MLflow UI renders (the run's Artifacts tab, JSON table)."""
        self.client.log_table(self.run_id, data=frame, artifact_file=artifact_file)

    def log_pyfunc(self, export_dir: Path, example: list[str]) -> str:
        """Log the export folder as a pyfunc model (DataFrame `source` -> `prediction`); returns its models:/ URI.

        The model carries the `seq2seq` package as code and needs only onnxruntime, numpy and pandas to serve;
        requirements are pinned from this environment instead of inferred (inference costs 5-10 s a log).
        """
        import mlflow
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(Schema([ColSpec("string", "source")]), Schema([ColSpec("string", "prediction")]))
        requirements = [f"{p}=={version(p)}" for p in ("mlflow", "onnxruntime", "numpy", "pandas")]
        mlflow.set_tracking_uri(self.tracking_uri)
        # Cloudpickling the wrapper is what it warns about; the class is ours and the file is our own artifact.
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=_pyfunc_class()(),
                artifacts={"export": str(export_dir)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=pd.DataFrame({"source": example}),
                pip_requirements=requirements,
            )
        self.set_tags({MODEL_URI_TAG: info.model_uri})
        return info.model_uri


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
def start_run(
    stage: str, run_name: str | None = None, env: Mapping[str, str] = os.environ, store: tuple | None = None
) -> Iterator[Run]:
    """A new run, closed as FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM). `store`: the
    (client, experiment id) of `_client(env)`, when the caller opened it already."""
    client, experiment_id = store or _client(env)
    name = run_name or env.get("DVC_EXP_NAME") or None
    created = client.create_run(experiment_id, run_name=name, tags=run_tags(env))
    run = Run(client, created.info.run_id, experiment_id, resolve_tracking_uri(env))
    with _lifecycle(client, run.run_id):
        yield run
        run.set_tags({f"{STAGE_TAG}.{stage}": "done"})


@contextlib.contextmanager
def continue_run(
    reference: Path, stage: str, inherit: tuple[str, ...], env: Mapping[str, str] = os.environ
) -> Iterator[Run]:
    """Append `stage` to the run named in `reference` (written by the stage before).

    When that run already has this stage (only part of the pipeline reran: a changed evaluate param, and train
    did not rerun), appending would overwrite the earlier results; a new run then continues it instead: the params
    of the `inherit` sections, the tags and the metrics (every point of their histories) are copied, and a
    `continues_run` tag points back. A watchdog process marks the run KILLED if this process dies without closing
    it (SIGKILL, the OOM killer), so it is never left RUNNING.
    """
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(env)
    run_id = read_run_reference(reference)
    try:
        client, experiment_id = _client(env)
    except Exception as err:  # an unusable store: a wrong URI, an unreachable server, a folder where a file goes
        raise TrackingError(f"MLflow: {type(err).__name__}: {err}") from None
    try:
        previous = active_run(client, run_id, uri)
    except RunUnavailable as err:
        retrain = "retrain to track it here" if err.missing else f"{err.remedy()}retrain"
        raise TrackingError(f"{reference} names MLflow {err}; {retrain} (dvc repro --force train)") from None
    except MlflowException as err:
        raise TrackingError(f"MLflow: {err}") from None
    fresh = f"{STAGE_TAG}.{stage}" in previous.data.tags
    owner = uuid.uuid4().hex
    if fresh:
        tags = {k: v for k, v in previous.data.tags.items() if not k.startswith((f"{STAGE_TAG}.", "mlflow."))}
        tags.update(run_tags(env), continues_run=previous.info.run_id, **{OWNER_TAG: owner})
        name = env.get("DVC_EXP_NAME") or previous.info.run_name
        run = Run(client, client.create_run(experiment_id, run_name=name, tags=tags).info.run_id, experiment_id, uri)
    else:
        client.set_tag(previous.info.run_id, OWNER_TAG, owner)
        client.update_run(previous.info.run_id, status="RUNNING")
        run = Run(client, previous.info.run_id, experiment_id, uri)
    with _watchdog(run.run_id, owner, env), _lifecycle(client, run.run_id):
        if fresh:  # inside the lifecycle: a failure here closes the new run as FAILED
            run.log_params({k: v for k, v in previous.data.params.items() if k.split(".")[0] in inherit})
            _copy_metric_histories(client, previous, run.run_id)
        yield run
        run.set_tags({f"{STAGE_TAG}.{stage}": "done"})


def _copy_metric_histories(client: Any, source: Any, run_id: str) -> None:
    """Every metric of run `source`, each point with its own step and timestamp, into run `run_id`: the new run
    shows the whole per-epoch curves, and a value this stage logs again (at step 0, now) is the latest by
    timestamp. Copied at the present time instead, a new value logged in the same millisecond would lose to a
    higher copied one (MLflow breaks ties by value) and hide behind it in `compare` and `promote`."""
    from mlflow.entities import Metric

    points = [
        Metric(point.key, point.value, point.timestamp, point.step)
        for key in source.data.metrics
        for point in client.get_metric_history(source.info.run_id, key)
    ]
    for start in range(0, len(points), 1000):  # log_batch takes at most 1000 metrics a call
        client.log_batch(run_id, metrics=points[start : start + 1000])


def read_run_reference(path: Path) -> str:
    """The run id in a run reference a stage wrote (`Run.write_reference`); TrackingError naming the file."""
    try:
        reference = read_json(path, "run reference")
    except InputError as err:
        raise TrackingError(str(err)) from None
    if not isinstance(reference, dict) or not isinstance(reference.get("run_id"), str):
        raise TrackingError(f"{path}: not a run reference (no run_id)")
    return reference["run_id"]


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A helper process resolves the store from `env` alone, with this process's environment for the rest."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))} | dict(env)


@contextlib.contextmanager
def _watchdog(run_id: str, owner: str, env: Mapping[str, str]) -> Iterator[None]:
    """A process that waits on a pipe from this one and marks `run_id` KILLED if the pipe closes without a word:
    this process died where no handler runs. It has its own process group, so a signal to this process's group
    (DVC stopping its stage, `kill -9 -PGID`) does not take it down too; until then it only waits, importing
    nothing. It acts only while the run's `stage_owner` tag is still `owner`: a rerun may have reopened the run
    in the seconds it takes to import MLflow, and that run is alive."""
    watch = "from seq2seq.tracking import _watch; _watch()"
    # No stdout or stderr: a watchdog that outlives this process must not hold the pipes DVC reads it through.
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "process_group": 0}
    cmd = [sys.executable, "-c", watch, run_id, owner]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=_child_env(env), **quiet)
    try:
        yield
    finally:  # the run is closed by now (FINISHED, FAILED or KILLED): the watchdog may go
        with contextlib.suppress(OSError):
            process.stdin.write(b"closed")
            process.stdin.close()
        process.wait()


def _watch() -> None:
    """The watchdog process of `_watchdog` (argv: the run id, the owner token)."""
    if sys.stdin.buffer.read() == b"closed":
        return
    run_id, owner = sys.argv[1:3]
    client, _ = _client(os.environ)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" and run.data.tags.get(OWNER_TAG) == owner:
        client.set_terminated(run_id, status="KILLED")


@contextlib.contextmanager
def reopen_run(
    run_id: str, stage: str, env: Mapping[str, str] = os.environ, store: tuple | None = None
) -> Iterator[Run]:
    """Continue `run_id` itself (a resumed training): same run, same params, closed like start_run's.
    RunUnavailable if the store does not hold it or it was deleted."""
    client, experiment_id = store or _client(env)
    active_run(client, run_id, resolve_tracking_uri(env))
    client.update_run(run_id, status="RUNNING")
    run = Run(client, run_id, experiment_id, resolve_tracking_uri(env))
    with _lifecycle(client, run_id):
        yield run
        run.set_tags({f"{STAGE_TAG}.{stage}": "done"})


class TrackingError(RuntimeError):
    """MLflow could not log (a store it cannot open, a failed call); the message names the cause."""


class RunUnavailable(TrackingError):
    """A run named by a file (a run reference, a training state) that the store does not hold (`missing`: another
    store tracked it), or that was deleted (restorable until purged)."""

    def __init__(self, run_id: str, uri: str, missing: bool) -> None:
        self.run_id, self.uri, self.missing = run_id, uri, missing
        super().__init__(
            f"run {run_id}, which {uri} does not hold" if missing else f"run {run_id}, which was deleted in {uri}"
        )

    def __reduce__(self):  # pickled from the helper process to the stage
        return RunUnavailable, (self.run_id, self.uri, self.missing)

    def remedy(self) -> str:
        return "" if self.missing else f"restore it (mlflow runs restore --run-id {self.run_id}) or "


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


class HelperRun:
    """The train stage's view of a run that a helper process logs (see `run_in_helper`): the same methods as
    `Run`, but each only sends a message, so training never waits on MLflow."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self._ready: tuple | None = None
        self._files = Path(tempfile.mkdtemp(prefix="seq2seq-artifacts-"))

    def _send(self, *message: Any) -> None:
        try:
            pickle.dump(message, self._process.stdin)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            # The helper is gone; what it said before going is raised at the next wait (or at close).
            self._wait_ready()
            raise TrackingError("MLflow: the logging helper process exited") from None

    def _read(self) -> tuple:
        try:
            return pickle.load(self._process.stdout)
        except EOFError:
            return ("error", f"the logging helper process exited (code {self._process.poll()})")

    def _wait_ready(self) -> tuple:
        if self._ready is None:
            self._ready = self._read()
        if self._ready[0] == "error":
            if len(self._ready) > 2 and self._ready[2] is not None:  # the run to reopen is gone: say what to do
                raise self._ready[2]
            raise TrackingError(f"MLflow: {self._ready[1]}")
        return self._ready

    def flush(self) -> None:
        """Wait until the helper has carried out every call so far; raise the first error it met."""
        self._wait_ready()
        self._send("flush")
        reply = self._read()
        if reply[0] == "error" or reply[1]:
            raise TrackingError(f"MLflow logging failed: {reply[1]}")

    @property
    def run_id(self) -> str:
        """Waits for the helper to have opened the run (it has, long before the first epoch ends)."""
        return self._wait_ready()[1]

    @property
    def experiment_id(self) -> str:
        return self._wait_ready()[2]

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send("log_params", {k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._send("log_metrics", {k: float(v) for k, v in metrics.items()}, step, int(time.time() * 1000))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._send("set_tags", {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Logs the file as it is now: a copy is taken, so the caller may change or delete it at once."""
        copy = self._files / str(len(list(self._files.iterdir()))) / Path(path).name
        copy.parent.mkdir()
        shutil.copy2(path, copy)
        self._send("log_artifact", str(copy), artifact_path)

    def write_reference(self, path: Path) -> None:
        Run.write_reference(self, path)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool) -> Iterator[None]:
        if enabled:
            self._send("system_metrics", True)
        try:
            yield
        finally:
            if enabled:
                self._send("system_metrics", False)

    def close(self, status: str) -> str | None:
        """Ask the helper to close the run as `status`; returns the first error it met, if any."""
        with contextlib.suppress(BrokenPipeError, OSError):
            pickle.dump(("close", status), self._process.stdin)
            self._process.stdin.flush()
        try:
            output, _ = self._process.communicate(timeout=600)
        except subprocess.TimeoutExpired:  # e.g. a tracking server that keeps retrying
            self._process.kill()
            self._process.wait()
            return "the logging helper did not close the run within 600 s"
        finally:
            shutil.rmtree(self._files, ignore_errors=True)
        replies = io.BytesIO(output)
        messages = []
        with contextlib.suppress(EOFError):
            while True:
                messages.append(pickle.load(replies))
        if self._ready is None and messages:
            self._ready = messages.pop(0)
        if self._ready is None or self._ready[0] == "error":
            return self._ready[1] if self._ready else f"the MLflow helper exited with {self._process.returncode}"
        closed = messages[0] if messages else ("closed", f"the MLflow helper exited with {self._process.returncode}")
        return closed[1]


def start_helper(env: Mapping[str, str] = os.environ) -> subprocess.Popen:
    """Start the helper process of `run_in_helper` ahead of its run; pass it on as `run_in_helper(process=...)`.

    Before it needs to know which run to open, the helper imports MLflow and opens the store (about 2 s of CPU).
    A stage that starts it first thing gets that done while it imports torch and loads its data on one core,
    instead of while it trains on all of them. `discard_helper` stops one that was never used; it has opened no
    run by then.
    """
    # os._exit: the helper has replied and flushed; tearing down MLflow's modules would only delay the trainer.
    serve = "from seq2seq.tracking import _serve; _serve(); import os, sys; sys.stderr.flush(); os._exit(0)"
    # Its own process group: a SIGKILL to the stage's group (`kill -9 -PGID`) must leave it alive to see its input
    # close and mark the run KILLED. Not its own session: with the kernel's autogroup scheduling (the default on
    # desktop and many server kernels) a session is scheduled as a group of its own, against which nice 19 means
    # nothing, and the helper took whole time slices from training: +8.4% +- 1.4% wall time at the default
    # profile (benchmarks/logging_overhead.py, 3 paired runs), where the same session measured +1.1% +- 5.6%.
    return subprocess.Popen(
        [sys.executable, "-c", serve],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_child_env(env),
        process_group=0,
    )


def discard_helper(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a helper from `start_helper` that `run_in_helper` did not use (the stage stopped before training);
    one that ran its run has exited already, and is left as it is. Its input closes first: it then returns
    when its warm-up is done, rather than dying in the middle of it (which may be creating or migrating the
    store); it is terminated only if it has not returned within `timeout` seconds."""
    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
    for pipe in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):
            pipe.close()


@contextlib.contextmanager
def run_in_helper(
    stage: str,
    run_id: str | None = None,
    env: Mapping[str, str] = os.environ,
    process: subprocess.Popen | None = None,
) -> Iterator[HelperRun]:
    """`start_run(stage)`, or `reopen_run(run_id, stage)`, carried out by a helper process.

    Importing MLflow and opening a SQLite store costs about 2 s of Python; in the training process that would be
    several percent of a short training run, and a logging thread would fight the training loop for the GIL. The
    helper does it on another core while this process trains; this process only sends it messages. The run
    closes as FINISHED, FAILED or KILLED like start_run's; if this process dies (SIGKILL), the helper sees its
    input close and marks the run KILLED, so no run is left RUNNING. `process`: a helper from `start_helper`
    (which took `env`), else one is started here.
    """
    run = HelperRun(process or start_helper(env))
    try:
        run._send("open", stage, run_id)
    except TrackingError:  # the helper is gone before the run opened: close() never comes to clean up
        shutil.rmtree(run._files, ignore_errors=True)
        raise
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    status, error = "FINISHED", None
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        error = run.close(status)
    if error:
        raise TrackingError(f"MLflow logging failed: {error}")


def _warm_up(env: Mapping[str, str]) -> tuple | None:
    """What the helper does before it knows its run: import MLflow and its SQL store, and open a SQLite store
    that exists already, returning `_client(env)`. A store that does not exist yet is left for the run to
    create (a stage that stops before training would otherwise leave one behind)."""
    from mlflow.tracking import MlflowClient  # noqa: F401

    uri = resolve_tracking_uri(env)
    if not uri.startswith("sqlite:///"):
        return None
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    return _client(env) if Path(uri.removeprefix("sqlite:///")).exists() else None


class _Closed(Exception):
    """The training process asked to close the run as FAILED."""


def _serve() -> None:
    """The helper process of `run_in_helper`: pickled messages in on stdin, replies out on stdout."""
    # stdout carries the replies: keep a private handle on it, and send everything else written to fd 1 (by
    # MLflow, C code or child processes) to stderr.
    inbox, outbox = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the trainer, which tells us how to close
    # Logging is background work: on a machine whose cores training keeps busy, the helper runs in their idle
    # moments instead of taking turns with the training threads (when the trainer waits on it, it has the CPU).
    os.nice(19)

    def reply(*message: Any) -> None:
        pickle.dump(message, outbox)
        outbox.flush()

    store, error = None, None
    with contextlib.suppress(Exception):  # whatever failed here fails again below, where it is reported
        store = _warm_up(os.environ)
    try:
        _, stage, run_id = pickle.load(inbox)
    except EOFError:  # discarded: the stage stopped before it trained
        return
    try:
        opened = reopen_run(run_id, stage, store=store) if run_id else start_run(stage, store=store)
        run = opened.__enter__()
    except Exception as err:  # a wrong URI, an unreachable server: the trainer raises it at its next wait
        reply("error", f"{type(err).__name__}: {err}", err if isinstance(err, RunUnavailable) else None)
        with contextlib.suppress(EOFError):  # stay until the trainer is done sending, so its writes never fail
            while pickle.load(inbox)[0] != "close":
                pass
        return
    reply("ready", run.run_id, run.experiment_id)
    monitor = contextlib.ExitStack()
    status = "KILLED"  # unless the trainer says otherwise: its input closing means it died
    try:
        while True:
            try:
                kind, *args = pickle.load(inbox)
            except EOFError:
                break
            if kind == "close":
                status = args[0]
                break
            if kind == "flush":
                reply("flushed", error)
                continue
            try:
                if kind == "system_metrics":
                    if args[0]:
                        monitor.enter_context(run.system_metrics(True))
                    else:
                        monitor.close()
                elif kind == "log_artifact":
                    run.log_artifact(Path(args[0]), args[1])
                else:
                    getattr(run, kind)(*args)
            except Exception as err:  # keep logging the rest; the first error is reported at close
                error = error or f"{kind}: {type(err).__name__}: {err}"
    finally:
        monitor.close()
        outcome = {"FINISHED": None, "FAILED": _Closed(), "KILLED": KeyboardInterrupt()}[status]
        try:
            if outcome is None:
                opened.__exit__(None, None, None)
            else:
                with contextlib.suppress(type(outcome)):
                    opened.__exit__(type(outcome), outcome, None)
        except Exception as err:
            error = error or f"closing the run: {type(err).__name__}: {err}"
        with contextlib.suppress(BrokenPipeError):  # the trainer may be gone (killed): nobody to tell
            reply("closed", error)


def experiment_id_of(env: Mapping[str, str] = os.environ) -> str:
    """The id of this project's MLflow experiment (created if the store has none yet)."""
    return _client(env)[1]


def _pyfunc_class() -> type:
    """The pyfunc wrapper class, made on first use so that importing this module does not import mlflow."""
    cls = globals().get("_PYFUNC_CLASS")
    if cls is not None:
        return cls
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class Seq2SeqPyfunc(mlflow.pyfunc.PythonModel):
        """DataFrame with a string column `source` (space-separated tokens) -> DataFrame `prediction`."""

        def load_context(self, context: Any) -> None:
            from seq2seq.serving import Predictor

            self.predictor = Predictor(Path(context.artifacts["export"]))

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
            if "source" not in getattr(model_input, "columns", []):
                raise MlflowException("the input needs a string column 'source'", INVALID_PARAMETER_VALUE)
            results = self.predictor.predict([str(s) for s in model_input["source"]])
            errors = [f"row {i}: {r.error}" for i, r in enumerate(results) if r.error]
            if errors:  # a 400 answer in `mlflow models serve`, naming every bad row
                raise MlflowException("; ".join(errors), INVALID_PARAMETER_VALUE)
            return pd.DataFrame({"prediction": [r.prediction for r in results]})

        # A DataFrame hint is one MLflow takes without deriving a schema from it (the signature is explicit). It
        # reads the hints when the class is made, evaluating strings in this module's globals, where pandas is
        # not (imported lazily, for the train stage's start-up): hand it the objects.
        predict.__annotations__.update(model_input=pd.DataFrame, **{"return": pd.DataFrame})

    # Pickled by reference as seq2seq.tracking.Seq2SeqPyfunc; the module __getattr__ below resolves it on load.
    Seq2SeqPyfunc.__module__, Seq2SeqPyfunc.__qualname__ = __name__, "Seq2SeqPyfunc"
    globals()["_PYFUNC_CLASS"] = Seq2SeqPyfunc
    return Seq2SeqPyfunc


def __getattr__(name: str) -> Any:
    if name == "Seq2SeqPyfunc":
        return _pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_predictor(model_uri: str, env: Mapping[str, str] = os.environ) -> Any:
    """The Predictor inside a logged or registered pyfunc (`models:/seq2seq@champion`, `runs:/...`)."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(resolve_tracking_uri(env))
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().predictor
    except MlflowException as err:  # no such model or alias: a message for the user, not a traceback
        raise LookupError(err.message) from None


def run_metrics(run_id: str, env: Mapping[str, str] = os.environ) -> dict[str, float]:
    """A run's latest metric values; RunUnavailable if the store does not hold the run or it was deleted."""
    client, _ = _client(env)
    return dict(active_run(client, run_id, resolve_tracking_uri(env)).data.metrics)


def champion(env: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(version, run id) of the model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    client, _ = _client(env)
    try:
        mv = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except MlflowException:  # no registered model, or no alias yet
        return None
    return mv.version, mv.run_id


def register(run_id: str, env: Mapping[str, str] = os.environ) -> str:
    """Register the run's pyfunc under REGISTERED_MODEL (once: a second call returns the same version)."""
    import mlflow

    client, _ = _client(env)
    model_uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise LookupError(f"run {run_id} has no logged model; run the export stage first")
    for existing in client.search_model_versions(f"name = '{REGISTERED_MODEL}' and run_id = '{run_id}'"):
        return existing.version
    mlflow.set_tracking_uri(resolve_tracking_uri(env))
    return mlflow.register_model(model_uri, REGISTERED_MODEL).version


def set_champion(version: str, env: Mapping[str, str] = os.environ) -> None:
    client, _ = _client(env)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)


def search_runs(tags: Mapping[str, str] | None = None, env: Mapping[str, str] = os.environ) -> pd.DataFrame:
    """The project experiment's runs (FINISHED only) as MLflow's DataFrame, optionally filtered by tag values."""
    import mlflow

    experiment_id = experiment_id_of(env)
    mlflow.set_tracking_uri(resolve_tracking_uri(env))
    runs = mlflow.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", output_format="pandas")
    # Tags filtered here, not in the filter string: MLflow's has no escape for a quote inside a value.
    for key, value in (tags or {}).items():
        column = runs.get(f"tags.{key}")
        runs = runs[column == value] if column is not None else runs.iloc[0:0]
    return runs.reset_index(drop=True)


def metric_histories(run_ids: list[str], key: str, env: Mapping[str, str] = os.environ) -> dict[str, pd.DataFrame]:
    """run id -> DataFrame(step, value) of one metric."""
    import pandas as pd

    client, _ = _client(env)
    histories = {}
    for run_id in run_ids:
        points = client.get_metric_history(run_id, key)
        histories[run_id] = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
    return histories


def link_experiments(links: list[dict[str, str]], env: Mapping[str, str] = os.environ) -> int:
    """Tag each run (and the runs continuing it) with its DVC experiment's name and commit; returns the count."""
    client, experiment_id = _client(env)
    tagged = 0
    for link in links:
        continuing = client.search_runs([experiment_id], f"tags.continues_run = '{link['run_id']}'")
        for run_id in [link["run_id"], *(r.info.run_id for r in continuing)]:
            client.set_tag(run_id, "dvc_exp_name", link["name"])
            client.set_tag(run_id, "dvc_exp_commit", link["rev"])
            tagged += 1
    return tagged


def run_tags_of(run_id: str, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    client, _ = _client(env)
    return dict(client.get_run(run_id).data.tags)
