# Two commands for a fresh machine (Python >= 3.10, git, make): `make run` and `make test`.
# Every target sets up .venv from requirements/constraints.txt first; a second call with nothing changed is fast.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PORT ?= 5000
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup run test lint format ui promote lock clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python >= 3.10 is required")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies and the package

run: $(STAMP)  ## set up, run the whole pipeline (dvc repro), show the metrics
	dvc repro
	@echo
	dvc metrics show
	@echo
	@echo "Metrics: metrics/*.json (dvc metrics show), curves: plots/*.csv (dvc plots show)."
	@echo "MLflow store: $$(seq2seq tracking-uri)"
	@echo "Open the MLflow UI: make ui   (then $$(seq2seq ui-url --port $(PORT)))"

test: $(STAMP)  ## set up and run the tests
	pytest

lint: $(STAMP)  ## ruff lint and format check
	ruff check .
	ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

ui: $(STAMP)  ## serve the MLflow UI for the local store on 127.0.0.1:$(PORT)
	@echo "Runs table: $$(seq2seq ui-url --port $(PORT))"
	mlflow ui --backend-store-uri "$$(seq2seq tracking-uri)" --host 127.0.0.1 --port $(PORT)

promote: $(STAMP)  ## register the last exported model; make it champion if it beats the current one
	seq2seq promote --run-ref models/export/mlflow_run.json

lock: $(STAMP)  ## rewrite requirements/constraints.txt from the current venv
	{ echo "# Exact versions for every install (make setup uses this as pip constraints). Regenerate: make lock"; \
	  pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > requirements/constraints.txt

clean:  ## remove the venv and caches (keeps data, models and the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
