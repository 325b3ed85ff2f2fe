"""MLflow tracking: the only code that imports mlflow (lazily, so the library imports without it).

store: which store and experiment; runs: opening, logging and ending a run; keeper: the process a stage logs
through; registry: reading runs back and the model registry (`from seq2seq.tracking import registry`);
pyfunc_model.py: the served model, logged from code.
"""

from seq2seq.tracking.keeper import Keeper, ending
from seq2seq.tracking.runs import OWNER_TAG, TEST_DATA_TAG, open_run, write_reference
from seq2seq.tracking.store import (
    DB_FILE,
    RunUnavailable,
    TrackingError,
    experiment_id_of,
    read_run_reference,
    resolve_artifact_location,
    resolve_tracking_uri,
    run_tags,
)
