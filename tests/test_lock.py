"""The committed dvc.lock describes this tree: its stages' commands and dependency lists are dvc.yaml's, and the
hashes and params sections it records are those of the code, params, metrics and plots here, so the committed
metrics are those of the committed code and params. (The working tree's files are checked: run it on a clean
checkout, as CI does, to check a commit.)"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from seq2seq.params import read_yaml
from tests.helpers import ROOT


def _tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


def _paths(entries: list) -> list[str]:
    """dvc.yaml's deps/outs/metrics/plots lists: plain paths or {path: options}."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def _lookup(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def test_the_lock_records_this_trees_stages_code_params_and_outputs():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = read_yaml((ROOT / "params.yaml").read_text())  # as DVC reads it (YAML 1.2)
    tracked = _tracked_files()
    stale = []
    assert set(lock["stages"]) == set(pipeline["stages"]), "dvc.lock and dvc.yaml name different stages"
    for stage, entry in lock["stages"].items():
        declared = pipeline["stages"][stage]
        if entry["cmd"] != declared["cmd"]:
            stale.append(f"{stage}: cmd changed")
        if {d["path"] for d in entry.get("deps", [])} != set(_paths(declared.get("deps", []))):
            stale.append(f"{stage}: deps changed")
        if set(entry.get("params", {}).get("params.yaml", {})) != set(declared.get("params", [])):
            stale.append(f"{stage}: params list changed")
        outputs = [*declared.get("outs", []), *declared.get("metrics", []), *declared.get("plots", [])]
        if {o["path"] for o in entry.get("outs", [])} != set(_paths(outputs)):
            stale.append(f"{stage}: outputs changed")
        # Code deps, and the outputs git tracks (metrics, plots): the committed files are the ones the lock hashed.
        for kind, files in (("dep", entry.get("deps", [])), ("output", entry.get("outs", []))):
            for file in files:
                if file["path"] not in tracked or (ROOT / file["path"]).is_dir():  # data, models: DVC's
                    continue
                digest = hashlib.md5((ROOT / file["path"]).read_bytes()).hexdigest()  # DVC 3's file hash
                if digest != file["md5"]:
                    stale.append(f"{stage}: {kind} {file['path']} changed")
        for key, values in entry.get("params", {}).get("params.yaml", {}).items():
            if _lookup(params, key) != values:  # a section, or one dotted key (train.device)
                stale.append(f"{stage}: params.yaml `{key}` changed")
    assert not stale, "dvc.lock is stale; run `dvc repro` and commit dvc.lock and metrics/:\n" + "\n".join(stale)


def test_every_stage_that_logs_to_mlflow_stays_out_of_the_run_cache():
    """DVC restores a stage from its run-cache, without running it, when its deps and params ran before; a stage
    that logs to MLflow would then log no run. A `persist` output keeps a stage out of the run-cache (DVC 3.67),
    which tests/test_experiments.py shows end to end for evaluate."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate", "export"):
        persisted = [o for o in stages[name]["outs"] if isinstance(o, dict) and next(iter(o.values())).get("persist")]
        assert persisted, f"{name}: no persist output, so DVC's run-cache may skip its MLflow run"


def _imported_files(script: Path) -> set[str]:
    """The project's files that running `script` imports (every import statement, also those inside functions),
    transitively, as paths relative to the repo: the package __init__ files on the way included."""
    found: set[str] = set()
    todo = [script]
    while todo:
        file = todo.pop()
        relative = file.relative_to(ROOT).as_posix()
        if relative in found:
            continue
        found.add(relative)
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for parts in (name.split(".") for name in names if name.split(".")[0] in ("seq2seq", "stages")):
                for depth in range(1, len(parts) + 1):
                    base = ROOT.joinpath(*parts[:depth])
                    todo += [f for f in (base / "__init__.py", base.with_suffix(".py")) if f.is_file()]
    return found


# Code a stage runs without importing it: MLflow loads the pyfunc model from its file (models-from-code).
RUN_BY_PATH = {"export": ["seq2seq/tracking/pyfunc_model.py"]}


def test_each_stages_code_deps_are_exactly_the_code_it_runs():
    """A code dep the stage does not run reruns it for nothing (and voids a saved training state); a missing one
    lets a change to the stage's code go unnoticed. So `seq2seq compare`'s code, for one, reruns nothing."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        declared = {d for d in _paths(stage["deps"]) if d.endswith(".py")}
        runs = _imported_files(ROOT / "stages" / f"{name}.py")
        for extra in RUN_BY_PATH.get(name, []):
            runs |= _imported_files(ROOT / extra)
        assert declared == runs, f"{name}: missing {sorted(runs - declared)}, not run {sorted(declared - runs)}"


def test_a_stage_run_by_a_python_without_the_projects_packages_says_what_to_do():
    """`.venv/bin/dvc repro` without the venv activated runs the stages with another Python (`-S`: one without
    site-packages stands in for it): one line saying what to do, not an import traceback."""
    command = [sys.executable, "-S", "-m", "stages.generate"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "source .venv/bin/activate" in result.stderr
    assert "Traceback" not in result.stderr
