"""The committed dvc.lock describes this tree: every code dependency's hash and every params section it records
are those of the files here, so the committed metrics are those of the committed code and params."""

from __future__ import annotations

import hashlib
import subprocess

import yaml

from tests.conftest import ROOT


def _tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


def test_the_lock_records_this_trees_code_and_params():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tracked = _tracked_files()
    stale = []
    for stage, entry in lock["stages"].items():
        for dep in entry.get("deps", []):
            if dep["path"] not in tracked:  # data and model outputs: DVC's, not git's
                continue
            digest = hashlib.md5((ROOT / dep["path"]).read_bytes()).hexdigest()  # DVC 3's file hash
            if digest != dep["md5"]:
                stale.append(f"{stage}: {dep['path']} changed")
        for section, values in entry.get("params", {}).get("params.yaml", {}).items():
            if params.get(section) != values:
                stale.append(f"{stage}: params.yaml `{section}` changed")
    assert not stale, "dvc.lock is stale; run `dvc repro` and commit dvc.lock and metrics/:\n" + "\n".join(stale)
