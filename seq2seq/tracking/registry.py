"""Reading runs back and the model registry: `seq2seq compare`, `link`, `promote`, `predict` and the report."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seq2seq.tracking.runs import MODEL_URI_TAG
from seq2seq.tracking.store import (
    RunUnavailable,
    active_run,
    experiment_id_of,
    open_store,
    resolve_tracking_uri,
    store_errors,
)

if TYPE_CHECKING:
    import pandas as pd

REGISTERED_MODEL = "seq2seq"
CHAMPION = "champion"

__all__ = ["CHAMPION", "REGISTERED_MODEL", "experiment_id_of"]


def load_predictor(model_ref: str, env: Mapping[str, str] = os.environ) -> Any:
    """The Predictor of an export folder, or the one inside a logged or registered pyfunc (`models:/seq2seq@champion`,
    `runs:/...`); FileNotFoundError for a path that is neither."""
    from seq2seq.serving import Predictor

    if Path(model_ref).is_dir():
        return Predictor(Path(model_ref))
    if ":" not in model_ref:  # not a URI: a folder that is not there
        raise FileNotFoundError("no such export folder (models/export after dvc repro), nor an MLflow model URI")
    return _logged_predictor(model_ref, env)


@store_errors
def _logged_predictor(model_uri: str, env: Mapping[str, str]) -> Any:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(resolve_tracking_uri(env))
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().predictor
    except MlflowException as err:  # no such model or alias: a message for the user, not a traceback
        raise LookupError(err.message) from None


@store_errors
def run_metrics(run_id: str, env: Mapping[str, str] = os.environ) -> dict[str, float]:
    """A run's latest metric values; RunUnavailable if the store does not hold the run or it was deleted."""
    client, _ = open_store(env)
    return dict(active_run(client, run_id, resolve_tracking_uri(env)).data.metrics)


@store_errors
def champion(env: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(version, run id) of the model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    client, _ = open_store(env)
    try:
        mv = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except MlflowException:  # no registered model, or no alias yet
        return None
    return mv.version, mv.run_id


@store_errors
def register(run_id: str, env: Mapping[str, str] = os.environ) -> str:
    """Register the run's pyfunc under REGISTERED_MODEL (once: a second call returns the same version)."""
    import mlflow

    client, _ = open_store(env)
    model_uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise LookupError(f"run {run_id} has no logged model; run the export stage first")
    for existing in client.search_model_versions(f"name = '{REGISTERED_MODEL}' and run_id = '{run_id}'"):
        return existing.version
    mlflow.set_tracking_uri(resolve_tracking_uri(env))
    return mlflow.register_model(model_uri, REGISTERED_MODEL).version


@store_errors
def experiment_run(name: str, env: Mapping[str, str] = os.environ) -> str:
    """The id of the latest finished run of the DVC experiment `name` that logged a model; LookupError if none."""
    client, experiment_id = open_store(env)
    if "'" in name:  # MLflow's filter strings have no escape for a quote (DVC's names never hold one)
        raise LookupError(f"no DVC experiment is named {name!r}")
    query = f"tags.dvc_exp_name = '{name}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])
    exported = [r.info.run_id for r in runs if MODEL_URI_TAG in r.data.tags]
    if not exported:
        raise LookupError(f"no finished run of DVC experiment {name!r} logged a model (dvc exp show lists them)")
    return exported[0]


@store_errors
def set_champion(version: str, env: Mapping[str, str] = os.environ) -> None:
    client, _ = open_store(env)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)


@store_errors
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


@store_errors
def metric_histories(run_ids: list[str], key: str, env: Mapping[str, str] = os.environ) -> dict[str, pd.DataFrame]:
    """run id -> DataFrame(step, value) of one metric."""
    import pandas as pd

    client, _ = open_store(env)
    histories = {}
    for run_id in run_ids:
        points = client.get_metric_history(run_id, key)
        histories[run_id] = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
    return histories


@store_errors
def link_experiments(links: list[dict[str, str]], env: Mapping[str, str] = os.environ) -> tuple[int, list[str]]:
    """Tag each run (and the runs continuing it) with its DVC experiment's name and commit; returns the count, and
    the experiments whose run this store does not hold (logged to another store) or deleted, left alone."""
    client, experiment_id = open_store(env)
    tagged, elsewhere = 0, []
    for link in links:
        try:
            active_run(client, link["run_id"], resolve_tracking_uri(env))
        except RunUnavailable:
            elsewhere.append(link["name"])
            continue
        continuing = client.search_runs([experiment_id], f"tags.continues_run = '{link['run_id']}'")
        for run_id in [link["run_id"], *(r.info.run_id for r in continuing)]:
            client.set_tag(run_id, "dvc_exp_name", link["name"])
            client.set_tag(run_id, "dvc_exp_commit", link["rev"])
            tagged += 1
    return tagged, elsewhere


@store_errors
def run_tags_of(run_id: str, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    client, _ = open_store(env)
    return dict(client.get_run(run_id).data.tags)
