"""The served model, logged from code (MLflow's models-from-code): DataFrame `source` -> DataFrame `prediction`,
`outside_trained_lengths`.

MLflow runs this file when it loads the model; `set_model` names the model. It serves the export folder (the
artifact `export`) through `seq2seq.serving.Predictor`: onnxruntime, no torch.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

# Rows a request may hold: answered in about 2 s at the exported model's ~5,000 lines/s on a CPU core
# (docs/performance.md), where a larger one would still be computing after a proxy's timeout gave up on it.
MAX_ROWS = 10_000


class Seq2SeqModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from seq2seq.serving import Predictor

        self.predictor = Predictor(Path(context.artifacts["export"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "source" not in getattr(model_input, "columns", []):
            raise MlflowException("the input needs a string column 'source'", INVALID_PARAMETER_VALUE)
        sources = list(model_input["source"])
        if len(sources) > MAX_ROWS:
            raise MlflowException(f"{len(sources)} rows; at most {MAX_ROWS} a request", INVALID_PARAMETER_VALUE)
        # Strings only, as the signature says: MLflow lets a number through, and str(None) would be a token
        shown = ["null" if s is None or s != s else repr(s) for s in sources]  # s != s: NaN, pandas' null
        wrong = [f"row {i}: not a string ({shown[i]})" for i, s in enumerate(sources) if not isinstance(s, str)]
        results = [] if wrong else self.predictor.predict(sources)
        errors = wrong or [f"row {i}: {r.error}" for i, r in enumerate(results) if r.error]
        if errors:  # a 400 answer in `mlflow models serve`, naming every bad row
            raise MlflowException("; ".join(errors), INVALID_PARAMETER_VALUE)
        # The flag: a source of a length the model never trained on (`3` gives `3 3`), predicted all the same
        outside = [r.warning is not None for r in results]
        return pd.DataFrame({"prediction": [r.prediction for r in results], "outside_trained_lengths": outside})


mlflow.models.set_model(Seq2SeqModel())
