# Two commands for a fresh machine (Python >= 3.11, git, make): `make run` and `make test`.
# Every target sets up .venv from requirements/constraints.txt first; a second call with nothing changed is fast.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PORT ?= 5000
SERVER_PORT ?= 5001
DB ?= sqlite
# make server DB=postgres: the database (the driver is the `postgres` extra, in .venv already); artifacts stay proxied.
PG_URI ?= postgresql://mlflow@127.0.0.1:5432/mlflow
ARTIFACTS ?= $(CURDIR)/mlserver/artifacts
JOBS ?= 2
TEST_JOBS ?= auto
PROFILE ?= default
PROMOTE ?= 0
OVERRIDES ?=
# MLflow's server-side job runner (GenAI's scorers and prompt optimization) off for `make ui` and `make server`: this
# project submits no jobs, and the runner is half a dozen more processes that each import MLflow (a server's start
# took 18 s of CPU with it, 8 s without). tests/helpers.server starts the tests' servers the same way.
SERVE := MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup run plots test test-fast lint format ui promote retrain sweep server lock clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies and the package

run: $(STAMP)  ## set up, run the whole pipeline (dvc repro), show the key metrics of the runs in the MLflow store
	dvc repro
	@echo
	seq2seq compare
	@echo
	@echo "Every metric: metrics/*.json (dvc metrics show --md). Curves: the MLflow UI below, or make plots (offline)."
	@echo "MLflow store: $$(seq2seq tracking-uri)"
	@echo "Open the MLflow UI: make ui   (then $$(seq2seq ui-url --port $(PORT)))"

plots: $(STAMP)  ## dvc plots show, on a page that renders offline (DVC's own loads its chart library from a CDN)
	@mkdir -p .dvc/tmp
	python -c 'from seq2seq.compare import offline_plots_template as t; open(".dvc/tmp/plots.html", "w").write(t())'
	dvc plots show --html-template .dvc/tmp/plots.html

test: $(STAMP)  ## set up and run the tests, a test file per CPU at a time (TEST_JOBS=0: in one process)
	pytest -n $(TEST_JOBS) --dist loadfile --durations=15

test-fast: $(STAMP)  ## the edit loop's tier: unit tests only, no stage or pipeline runs (about a minute)
	pytest -n $(TEST_JOBS) -m "not slow"

lint: $(STAMP)  ## ruff lint and format check
	ruff check .
	ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

# One worker for one user: ready in 6.7-7.4 s with 7 s of CPU, against 10.2-11.3 s and 18-19 s with MLflow's default 4.
ui: $(STAMP)  ## serve the MLflow UI for the local store on 127.0.0.1 (PORT, default 5000)
	@uri="$${MLFLOW_TRACKING_URI:-$$(seq2seq tracking-uri)}"; case "$$uri" in http://*|https://*) \
	  echo "MLFLOW_TRACKING_URI is a tracking server: its own UI is $$(seq2seq tracking-uri) (nothing to serve here)"; exit 0;; esac; \
	echo "Runs table: $$(seq2seq ui-url --port $(PORT))"; \
	$(SERVE) ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(PORT) --workers 1

promote: $(STAMP)  ## register the last exported model; make it champion if it beats the current one
	seq2seq promote --run-ref models/export/mlflow_run.json

retrain:  ## what CI does: setup, dvc repro --force --no-run-cache, gate, report (PROFILE=smoke, PROMOTE=1, OVERRIDES=...)
	PROFILE="$(PROFILE)" PROMOTE="$(PROMOTE)" OVERRIDES="$(OVERRIDES)" bash .ci/retrain

sweep: $(STAMP)  ## a 2x2 grid (train.lr x model.hidden_dim) through the DVC queue, JOBS at a time; link, compare
	dvc exp run --queue -S 'train.lr=0.001,0.003' -S 'model.hidden_dim=64,128'
	@# Workers inherit this shell's environment: split the cores between them, or JOBS processes each running
	@# torch on every core thrash (measured: 4 variants took 689 s with -j 2 against 419 s with -j 1 on 2 cores).
	OMP_NUM_THREADS=$$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )) dvc queue start -j $(JOBS)
	@while dvc queue status | grep -qE 'Queued|Running'; do sleep 5; done
	@dvc queue status
	seq2seq link
	seq2seq compare --tag dvc_exp_baseline_rev=$$(git rev-parse HEAD) --html reports/sweep.html

server: $(STAMP)  ## a tracking server on 127.0.0.1:SERVER_PORT (5001): SQLite in mlserver/, or DB=postgres on PG_URI
	@mkdir -p $(ARTIFACTS)
	@echo "Log to it: export MLFLOW_TRACKING_URI=http://127.0.0.1:$(SERVER_PORT)"
	$(SERVE) server --backend-store-uri "$(if $(filter postgres,$(DB)),$(PG_URI),sqlite:///$(CURDIR)/mlserver/mlflow.db)" \
	  --artifacts-destination "$(ARTIFACTS)" --host 127.0.0.1 --port $(SERVER_PORT)

lock: $(STAMP)  ## rewrite requirements/constraints.txt from the current venv
	{ echo "# Exact versions for every install (make setup uses this as pip constraints). Regenerate: make lock"; \
	  pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > requirements/constraints.txt

clean:  ## remove the venv and caches (keeps data, models and the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
