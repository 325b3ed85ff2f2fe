"""The pipeline's DVC stages, one thin click command each (`python -m stages.<name>`, as dvc.yaml runs them)."""

import importlib.util
import sys

# dvc.yaml runs `python` from PATH: `.venv/bin/dvc repro` without the venv activated finds another Python, where
# the stages would fail on their first import with a traceback. Say what to do instead.
if not all(importlib.util.find_spec(name) for name in ("click", "torch", "mlflow")):
    sys.exit(f"{sys.executable} lacks the project's packages: `source .venv/bin/activate` first (or `make run`)")
