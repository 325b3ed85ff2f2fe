"""The pipeline's DVC stages, one thin click command each (`python -m stages.<name>`, as dvc.yaml runs them)."""
