"""MLflow runs: the one function that opens or continues a run, what a stage logs through, and how a run ends.

Stages never call this directly: they talk to a keeper process (keeper.py), which calls it for them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from seq2seq.files import write_json
from seq2seq.tracking.store import (
    RunUnavailable,
    TrackingError,
    active_run,
    cause,
    open_store,
    read_run_reference,
    resolve_tracking_uri,
    run_tags,
)

STAGE_TAG = "stage"  # stage.<name> = done once a stage has logged to a run
MODEL_URI_TAG = "model_uri"  # the pyfunc the export stage logged
TEST_DATA_TAG = "test_data_digest"  # the evaluate stage's test splits: metrics compare only on the same ones
OWNER_TAG = "stage_owner"  # a token of the stage that holds the run open: only its keeper may mark it KILLED
MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")  # MLflow's models-from-code: the file is the model


class Run:
    """One open MLflow run. Every call is one request to the store (metrics: one log_batch per epoch)."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, stage: str, owner: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.stage, self.owner = stage, owner
        self._monitor: Any = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib Figure as an image artifact (the run's Artifacts tab)."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, frame: Any, artifact_file: str) -> None:
        """A DataFrame as a table artifact the MLflow UI renders (the run's Artifacts tab)."""
        self.client.log_table(self.run_id, data=frame, artifact_file=artifact_file)

    def monitor(self, enabled: bool) -> None:
        """Start (True) or stop (False) sampling CPU, memory and GPU usage into the run ("System metrics")."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if enabled and self._monitor is None:
            uri = self.client.tracking_uri
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, tracking_uri=uri)
            self._monitor.start()
        elif not enabled and self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def log_dataset(self, name: str, digest: str, source: Path, contexts: tuple[str, ...]) -> None:
        """The data the run used, as MLflow dataset inputs, one per split (`contexts`): the runs table's Dataset
        column and the run's Datasets section."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        def split(context: str) -> Dataset:  # one per split: MLflow keeps one input per (name, digest)
            return Dataset(f"{name}-{context}", digest[:32], "local", json.dumps({"uri": str(source)}))

        inputs = [DatasetInput(split(c), [InputTag("mlflow.data.context", c)]) for c in contexts]
        try:
            self.client.log_inputs(self.run_id, inputs)
        except MlflowException:
            # MLflow's database store looks up which datasets exist, then inserts the others: two runs logging the
            # same data at once (queued experiments in parallel, a server on PostgreSQL) race, and one insert fails
            # on the dataset's primary key. Its transaction rolled back; a second try finds the other's row.
            self.client.log_inputs(self.run_id, inputs)

    def log_model(self, export_dir: Path, example: list[str], metrics: Mapping[str, float]) -> str:
        """The export folder as a pyfunc model logged from code (DataFrame `source` -> `prediction`), named after
        the run and carrying `metrics` (the experiment's Models view compares models by them); returns its
        models:/ URI. Requirements are pinned from this environment, not inferred (5-10 s a log)."""
        import mlflow
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        outputs = Schema([ColSpec("string", "prediction"), ColSpec("boolean", "outside_trained_lengths")])
        signature = ModelSignature(Schema([ColSpec("string", "source")]), outputs)
        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_id) as active:
            info = mlflow.pyfunc.log_model(
                name=f"seq2seq-{active.info.run_name}",
                python_model=str(MODEL_FILE),
                artifacts={"export": str(export_dir)},
                code_paths=[str(Path(__file__).parents[1])],  # the seq2seq package: serving needs it
                signature=signature,
                input_example=pd.DataFrame({"source": example}),
                pip_requirements=[f"{p}=={version(p)}" for p in ("mlflow", "onnxruntime", "numpy", "pandas")],
            )
            mlflow.log_metrics(dict(metrics), model_id=info.model_id)
        self.set_tags({MODEL_URI_TAG: info.model_uri})
        return info.model_uri

    def sync(self) -> None:
        """Nothing to wait for: every call is done when it returns (the keeper's runs answer later)."""

    def end(self, status: str) -> None:
        """Close the run as FINISHED (the stage's tag set), FAILED or KILLED."""
        self.monitor(False)
        if status == "FINISHED":
            self.set_tags({f"{STAGE_TAG}.{self.stage}": "done"})
        for attempt in range(3):  # a store locked (20 s a try) or down for a while: a run must not stay RUNNING
            try:
                return self.client.set_terminated(self.run_id, status=status)
            except Exception:
                if attempt == 2:
                    raise

    def end_if_owned(self) -> None:
        """KILLED, unless another stage has reopened the run since (a rerun's run is alive) or it is closed."""
        run = self.client.get_run(self.run_id)
        if run.info.status == "RUNNING" and run.data.tags.get(OWNER_TAG) == self.owner:
            self.end("KILLED")


def write_reference(run: Any, path: Path) -> None:
    """The small file the next stage reads to append to this run."""
    write_json(path, {"experiment_id": run.experiment_id, "run_id": run.run_id})


def open_run(
    stage: str,
    reference: Path | None = None,
    resume: tuple[str, Path] | None = None,
    inherit: tuple[str, ...] = (),
    env: Mapping[str, str] = os.environ,
    store: tuple | None = None,
) -> Run:
    """The one way a stage opens a run, RUNNING until `Run.end`: a new run; or `resume`, (a run id, the training
    state naming it), to continue that run itself; or the run named in the run reference file `reference`
    (written by the stage before), to append `stage` to it.

    When that run already has this stage (only part of the pipeline reran: a changed evaluate param, and train did
    not rerun), appending would overwrite the earlier results; a new run then continues it instead: the params of
    the `inherit` sections, the tags and every metric's history are copied, and a `continues_run` tag points back.
    `store`: `open_store(env)`'s result, when the caller has it already.
    """
    from mlflow.exceptions import MlflowException

    uri, owner = resolve_tracking_uri(env), uuid.uuid4().hex
    client, experiment_id = store or open_store(env)
    run_id = read_run_reference(reference) if reference else resume and resume[0]
    try:
        previous = active_run(client, run_id, uri) if run_id else None
    except RunUnavailable as err:
        if reference is None:  # a training state: its epochs are lost without the run, or start over
            state = resume[1]
            raise TrackingError(
                f"{state} resumes MLflow {err}, so it cannot be reopened; {err.remedy()}delete {state} to train "
                "from scratch"
            ) from None
        retrain = "retrain to track it here" if err.missing else f"{err.remedy()}retrain"
        raise TrackingError(f"{reference} names MLflow {err}; {retrain} (dvc repro --force train)") from None
    except MlflowException as err:
        raise TrackingError(f"MLflow store {uri}: {cause(err)}") from None
    if previous is not None and not (reference and f"{STAGE_TAG}.{stage}" in previous.data.tags):
        client.set_tag(run_id, OWNER_TAG, owner)
        client.update_run(run_id, status="RUNNING")
        return Run(client, run_id, experiment_id, stage, owner)
    source = {"mlflow.source.name": f"python -m stages.{stage}", "mlflow.source.type": "LOCAL"}  # the Source column
    tags = run_tags(env) | source | {OWNER_TAG: owner}
    name = env.get("DVC_EXP_NAME") or None
    if previous is not None:
        kept = {k: v for k, v in previous.data.tags.items() if not k.startswith((f"{STAGE_TAG}.", "mlflow."))}
        tags, name = kept | tags | {"continues_run": run_id}, name or previous.info.run_name
    run = Run(
        client, client.create_run(experiment_id, run_name=name, tags=tags).info.run_id, experiment_id, stage, owner
    )
    if previous is not None:
        try:
            run.log_params({k: v for k, v in previous.data.params.items() if k.split(".")[0] in inherit})
            _copy_metric_histories(client, previous, run.run_id)
        except BaseException:
            run.end("FAILED")
            raise
    return run


def _copy_metric_histories(client: Any, source: Any, run_id: str) -> None:
    """Every metric of run `source`, each point with its own step and timestamp, into run `run_id`: the new run
    shows the whole curves, and a value this stage logs again is the latest by timestamp. Copied at the present
    time instead, a new value logged in the same millisecond would lose to a higher copied one (MLflow breaks ties
    by value) and hide behind it in `compare` and `promote`."""
    from mlflow.entities import Metric

    points = [
        Metric(point.key, point.value, point.timestamp, point.step)
        for key in source.data.metrics
        for point in client.get_metric_history(source.info.run_id, key)
    ]
    for start in range(0, len(points), 1000):  # log_batch takes at most 1000 metrics a call
        client.log_batch(run_id, metrics=points[start : start + 1000])
