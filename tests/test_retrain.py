"""CI retraining: the gate's rule, the gate and report commands, the retraining script end to end on the smoke
profile, and the GitHub Actions workflow checked by actionlint."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from seq2seq.cli import main
from seq2seq.gate import GateConfig, check
from tests.helpers import ROOT, TINY, commit, env, run, tiny_repo

CFG = GateConfig(max_exact_match_drop=0.01, max_bleu_drop=0.02, max_wer_rise=0.01)
GOOD = {"test": {"exact_match": 0.95, "bleu": 0.97, "loss": 0.1}, "test_long": {"exact_match": 0.4}}


def _failures(current, baseline=GOOD):
    return {c.metric: c.note for c in check(current, baseline, CFG) if not c.ok}


def test_gate_rule():
    assert _failures(GOOD) == {}
    assert _failures({**GOOD, "test": {**GOOD["test"], "exact_match": 0.945}}) == {}  # within the tolerance
    degraded = {**GOOD, "test": {**GOOD["test"], "exact_match": 0.90}}
    assert _failures(degraded) == {"test.exact_match": "dropped by 0.05 > 0.01"}
    assert _failures({**GOOD, "test": {**GOOD["test"], "bleu": 0.9}}) == {"test.bleu": "dropped by 0.07 > 0.02"}
    assert _failures({**GOOD, "test": {"exact_match": 0.95, "bleu": 0.97}}) == {"test.loss": "missing"}
    assert _failures({**GOOD, "test_long": {"exact_match": math.nan}}) == {"test_long.exact_match": "not finite"}
    assert _failures({**GOOD, "test": {**GOOD["test"], "loss": 5.0}}) == {}  # no tolerance on loss: presence only
    assert _failures(GOOD, baseline=None) == {}  # a first run: nothing to fall behind
    assert _failures({}, baseline=None) == {"test.exact_match": "missing", "test.bleu": "missing"}
    words = {**GOOD, "test": {**GOOD["test"], "wer": 0.30}}  # g2p: WER, lower is better
    assert _failures({**words, "test": {**words["test"], "wer": 0.305}}, words) == {}
    assert _failures({**words, "test": {**words["test"], "wer": 0.33}}, words) == {"test.wer": "rose by 0.03 > 0.01"}
    assert _failures({**words, "test": {**words["test"], "wer": 0.2}}, words) == {}  # fell: better


def test_gate_command_exit_codes(tmp_path, default_params):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(default_params))
    baseline, current = tmp_path / "baseline.json", tmp_path / "eval.json"
    baseline.write_text(json.dumps(GOOD))
    current.write_text(json.dumps(GOOD))
    args = ["gate", "--params", str(params), "--metrics", str(current), "--baseline-file", str(baseline)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "gate passed" in result.output
    current.write_text(json.dumps({**GOOD, "test": {**GOOD["test"], "exact_match": float("nan")}}))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "| test.exact_match | 0.95 | nan |" in result.output and "FAIL" in result.output


def _git(repo, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_gate_against_a_git_rev(tmp_path, monkeypatch, default_params):
    """`--baseline REV` (CI's default profile: HEAD) reads metrics/eval.json as committed at REV with `git show`,
    in a repository of its own: a rev without the file is a first run (no baseline, passes, says so); a rev git
    does not know is a one-line error."""
    import yaml

    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):  # set when pytest runs from a git hook
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")  # the machine's or user's git config plays no part
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.chdir(tmp_path)  # git show reads the repository of the working directory, as CI runs it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "params.yaml")
    _git(tmp_path, "commit", "-qm", "no metrics yet")
    metrics = tmp_path / "metrics" / "eval.json"
    metrics.parent.mkdir()
    degraded = {**GOOD, "test": {**GOOD["test"], "exact_match": 0.90}}
    for committed in (GOOD, degraded):  # HEAD~1 has the good metrics, HEAD the degraded ones
        metrics.write_text(json.dumps(committed))
        _git(tmp_path, "add", "metrics/eval.json")
        _git(tmp_path, "commit", "-qm", "metrics")

    def gate(rev: str, current: dict):
        metrics.write_text(json.dumps(current))
        args = ["gate", "--params", "params.yaml", "--metrics", "metrics/eval.json", "--baseline", rev]
        return CliRunner().invoke(main, args)

    # The baseline is the rev's file, not the workspace's: the degraded metrics fail against HEAD~1 only.
    result = gate("HEAD~1", degraded)
    assert result.exit_code == 1, result.output
    assert "baseline: metrics/eval.json at HEAD~1" in result.output
    assert "| test.exact_match | 0.95 | 0.9 |" in result.output and "test.exact_match dropped by 0.05" in result.output
    result = gate("HEAD", degraded)
    assert result.exit_code == 0 and "gate passed" in result.output, result.output
    result = gate("HEAD~1", GOOD)
    assert result.exit_code == 0 and "gate passed" in result.output, result.output
    # The same file named by its absolute path, and from a subfolder: still the rev's file.
    absolute = ["gate", "--params", "params.yaml", "--metrics", str(metrics), "--baseline", "HEAD~1"]
    metrics.write_text(json.dumps(degraded))
    result = CliRunner().invoke(main, absolute)
    assert result.exit_code == 1 and "test.exact_match dropped by 0.05" in result.output, result.output
    monkeypatch.chdir(metrics.parent)
    result = CliRunner().invoke(main, [*absolute[:2], str(tmp_path / "params.yaml"), *absolute[3:]])
    assert result.exit_code == 1 and "test.exact_match dropped by 0.05" in result.output, result.output
    monkeypatch.chdir(tmp_path)

    # A rev without the file: a first run, nothing to fall behind, and the output says where it looked.
    result = gate("HEAD~2", degraded)
    assert result.exit_code == 0 and "gate passed" in result.output, result.output
    assert "baseline: HEAD~2 (no metrics/eval.json there yet)" in result.output

    # A rev git does not know: git's reason on one line, no traceback, exit 1.
    result = gate("no-such-rev", GOOD)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("Error: cannot read metrics/eval.json at no-such-rev: fatal: "), result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output


def test_workflow_passes_actionlint():
    workflow = ROOT / ".github" / "workflows" / "retrain.yml"
    result = subprocess.run(["actionlint", str(workflow)], env=env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_retrain_script_on_a_profile(tmp_path):
    """.ci/retrain end to end on a profile of the tiny sizes (CI's own smoke retraining, in .ci/run, runs the real
    smoke profile against its committed baseline): apply the profile, retrain every stage, gate against the
    profile's baseline, report, and with UPDATE_BASELINE=1 make this run the new baseline, which a degraded model
    then fails against."""
    repo = tiny_repo(tmp_path, run_pipeline=False)  # the retraining runs every stage itself
    # The tests' profile, trained longer: enough for the tiny sizes to learn something (val exact match about 0.5),
    # in a second or two.
    profile = {**TINY, "train": {**TINY["train"], "max_epochs": 10, "lr": 0.01}}
    (repo / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(profile))
    baseline = repo / "profiles" / "tiny.baseline.json"
    baseline.write_text(json.dumps({"test": {"exact_match": 0.0, "bleu": 0.0}}))  # anything trained beats it
    commit(repo, "the tiny profile")
    out = run(["bash", ".ci/retrain"], repo, PROFILE="tiny", UPDATE_BASELINE="1", SETUP="0")
    assert "gate passed" in out and "new baseline: profiles/tiny.baseline.json" in out
    assert json.loads(baseline.read_text()) == json.loads((repo / "metrics" / "eval.json").read_text())
    page = (repo / "reports" / "retrain.md").read_text()
    run_id = json.loads((repo / "models" / "export" / "mlflow_run.json").read_text())["run_id"]
    assert f"MLflow run: `{run_id}`" in page and "| test.exact_match |" in page
    for image in ("retrain_loss.png", "retrain_by_length.png"):
        assert f"`{image}`" in page and (repo / "reports" / image).read_bytes()[:4] == b"\x89PNG"
    assert "Exact match by source length:" in page and "nan" not in page  # test_long's lengths: `-` under test

    # The new baseline is one the gate reads: this run's evaluation passes against it, a degraded one (its exact
    # match 0.2 lower, written here: the gate's rule is test_gate_rule's) fails.
    gate = ["seq2seq", "gate", "--params", "params.yaml", "--baseline-file", "profiles/tiny.baseline.json"]
    assert "gate passed" in run([*gate, "--metrics", "metrics/eval.json"], repo)
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert evaluation["test"]["exact_match"] >= 0.2, evaluation  # learnt something: there is room to fall
    evaluation["test"]["exact_match"] -= 0.2
    (tmp_path / "degraded.json").write_text(json.dumps(evaluation))
    out = run([*gate, "--metrics", str(tmp_path / "degraded.json")], repo, expect=1)
    assert "FAIL" in out and "test.exact_match dropped by 0.2" in out, out


def test_a_baseline_rev_that_git_would_take_for_an_option_is_refused(tmp_path, default_params):
    """`--baseline=--output=FILE` would make `git show` write a file, and `dvc metrics diff` take an option."""
    from seq2seq import report
    from seq2seq.gate import GateError

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    (tmp_path / "eval.json").write_text(json.dumps(GOOD))
    args = ["gate", "--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "eval.json")]
    result = CliRunner().invoke(main, [*args, "--baseline=--output=x"])
    assert result.exit_code == 1 and "Error: '--output=x' is not a git revision" in result.output, result.output
    assert not (tmp_path / "x").exists() and not (ROOT / "x").exists()
    with pytest.raises(GateError, match="not a git revision"):
        report.dvc_diff("metrics", "-x")


def test_report_command_writes_the_page_and_its_curves(tmp_path, monkeypatch, default_params):
    """`seq2seq report` against a baseline file: the gate table, the run and its DVC experiment, both PNGs; no dvc
    diff (a file is no rev). The run's tags come from the store: stubbed here."""
    from seq2seq.tracking import registry

    monkeypatch.setattr(registry, "run_tags_of", lambda run_id: {"dvc_exp_name": f"exp-of-{run_id}"})
    # CI fills the URI from a secret and posts the report: its credentials must not be in it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ci:S3CRET@mlflow.example.com")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    (tmp_path / "eval.json").write_text(json.dumps({**GOOD, "test": {**GOOD["test"], "exact_match": 0.5}}))
    (tmp_path / "baseline.json").write_text(json.dumps(GOOD))
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "abc123"}))
    history = "epoch,train_loss,val_loss,val_exact_match\n1,1.0,1.1,0.2\n2,0.5,0.6,0.4\n"
    (tmp_path / "history.csv").write_text(history)
    (tmp_path / "by_length").mkdir()
    (tmp_path / "by_length" / "test.csv").write_text("length,exact_match\n3,0.9\n4,0.8\n")
    out = tmp_path / "reports" / "retrain.md"
    args = ["report", "--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "eval.json")]
    args += ["--history", str(tmp_path / "history.csv"), "--by-length", str(tmp_path / "by_length")]
    args += ["--run-ref", str(tmp_path / "run.json"), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--baseline-file", str(tmp_path / "baseline.json")])
    assert result.exit_code == 0 and f"report: {out}" in result.output, result.output
    page = out.read_text()
    assert f"- Gate: **failed** (baseline: {tmp_path / 'baseline.json'})" in page
    assert "- MLflow run: `abc123` in `https://***@mlflow.example.com`" in page and "S3CRET" not in page
    assert "- DVC experiment: exp-of-abc123" in page
    assert "| test.exact_match | 0.95 | 0.5 |" in page and "FAIL" in page
    assert page.count(f"(the baseline is {tmp_path / 'baseline.json'}, not a git rev)") == 2
    for image in ("retrain_loss.png", "retrain_by_length.png"):  # named, not embedded: a PR comment cannot show them
        assert (
            f"`{image}`" in page and f"]({image})" not in page and (out.parent / image).read_bytes()[:4] == b"\x89PNG"
        )
    # What renders in a PR comment and the job summary: the same figures as tables
    assert "|       2 |          0.5 |        0.6 |               0.4 |" in page, page
    assert "|        3 |  0.900 |" in page, page

    (tmp_path / "run.json").write_text("{}")  # a broken run reference: one line, nothing written
    out.unlink()
    result = CliRunner().invoke(main, [*args, "--baseline-file", str(tmp_path / "baseline.json")])
    assert result.exit_code == 1 and "run.json: not a run reference" in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()
