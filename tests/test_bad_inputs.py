"""Broken input files (data, vocabulary, checkpoint, training state, run reference, metrics) stop a stage with one
line that names the file, exit 1, no traceback, and no output written; a run that cannot be logged leaves none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.helpers import ROOT, TINY, copy_repo, load_stage, set_params, stage_args


def _invoke(stage: str, args: list[str]):
    return CliRunner().invoke(load_stage(stage), args)


def _evaluate_args(work: Path, out: Path) -> list[str]:
    args = ["--params", str(work / "params.yaml"), "--data", str(work / "gen" / "data")]
    args += ["--checkpoint", str(work / "train" / "model.pt"), "--run-ref", str(work / "train" / "run.json")]
    args += ["--history", str(work / "train" / "h.csv"), "--out-run-ref", str(out / "eval_run.json")]
    return [*args, "--metrics", str(out / "eval.json"), "--by-length", str(out / "by_length")]


def _export_args(work: Path, out: Path) -> list[str]:
    args = ["--params", str(work / "params.yaml"), "--checkpoint", str(work / "train" / "model.pt")]
    args += ["--run-ref", str(work / "eval" / "eval_run.json"), "--train-metrics", str(work / "train" / "metrics.json")]
    return [*args, "--eval-metrics", str(work / "eval" / "eval.json"), "--out", str(out / "export")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """generate, train and evaluate on the tiny profile, in-process, with a SQLite store in the same folder."""
    work = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, **TINY)
    set_params(work, train={"max_epochs": 2})  # a state after epoch 1 then has an epoch left to train
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DVC_ROOT", str(work))  # the store: work/mlflow.db, work/mlruns
        for stage, out, data in (("generate", "gen", work), ("train", "train", work / "gen" / "data")):
            result = _invoke(stage, stage_args(stage, work / "params.yaml", work / out, data))
            assert result.exit_code == 0, result.output
        result = _invoke("evaluate", _evaluate_args(work, work / "eval"))
        assert result.exit_code == 0, result.output
    return work


@pytest.fixture
def work(pipeline, tmp_path, monkeypatch) -> Path:
    """A copy of the pipeline's folder and store (moved with it: new runs log there), to break one file in."""
    copy = copy_repo(pipeline, tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    return copy


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_text("garbage\n")


def _drop_tokens(path: Path) -> None:  # a vocabulary that cannot encode the data
    path.write_text('{"tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "0"]}\n')


BROKEN = {
    # stage, the file to break (under the work folder), how, the message's text after the file's name
    "train, truncated split": ("train", "gen/data/train.parquet", _truncate, "not a readable parquet file"),
    "train, vocabulary not JSON": ("train", "gen/data/vocab.json", _garbage, "not a vocabulary file"),
    "train, vocabulary too small": ("train", "gen/data/train.parquet", None, "unknown token"),
    "evaluate, garbage checkpoint": ("evaluate", "train/model.pt", _garbage, "not a checkpoint"),
    "evaluate, truncated checkpoint": ("evaluate", "train/model.pt", _truncate, "not a readable checkpoint"),
    "evaluate, missing split": ("evaluate", "gen/data/test_long.parquet", Path.unlink, "run the generate stage"),
    "evaluate, run reference not JSON": ("evaluate", "train/run.json", _garbage, "not a readable run reference"),
    "export, metrics not JSON": ("export", "eval/eval.json", _garbage, "not a readable metrics file"),
    "export, truncated checkpoint": ("export", "train/model.pt", _truncate, "not a readable checkpoint"),
    "export, metrics of another shape": ("export", "eval/eval.json", "[1, 2]", "not the evaluate stage's metrics"),
    "evaluate, history without its columns": ("evaluate", "train/h.csv", "a,b\n1,2\n", "not a training history"),
    "evaluate, empty split": ("evaluate", "gen/data/test.parquet", "EMPTY", "no examples"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_input_is_one_line_naming_the_file(work, case):
    stage, name, breaks, message = BROKEN[case]
    if breaks is None:
        _drop_tokens(work / "gen" / "data" / "vocab.json")
    elif breaks == "EMPTY":
        pd.read_parquet(work / name).head(0).to_parquet(work / name)
    elif isinstance(breaks, str):
        (work / name).write_text(breaks)
    else:
        breaks(work / name)
    out = work / "out"
    args = {
        "train": lambda: stage_args("train", work / "params.yaml", out, work / "gen" / "data"),
        "evaluate": lambda: _evaluate_args(work, out),
        "export": lambda: _export_args(work, out),
    }[stage]()
    result = _invoke(stage, args)
    assert result.exit_code == 1, result.output
    assert f"Error: {work / name}: " in result.output and message in result.output, result.output
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.slow
def test_evaluating_a_run_the_store_does_not_hold_writes_nothing(work):
    """models/ from a DVC remote, with someone else's MLflow store: the run reference names a run not here."""
    (work / "mlflow.db").unlink()
    out = work / "out"
    result = _invoke("evaluate", _evaluate_args(work, out))
    assert result.exit_code == 1, result.output
    assert "does not hold" in result.output and "dvc repro --force train" in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.slow
def test_evaluating_a_deleted_run_says_so(work):
    from mlflow.tracking import MlflowClient

    from seq2seq import tracking

    run_id = tracking.read_run_reference(work / "train" / "run.json")
    MlflowClient(f"sqlite:///{work / 'mlflow.db'}").delete_run(run_id)
    out = work / "out"
    result = _invoke("evaluate", _evaluate_args(work, out))
    assert result.exit_code == 1 and f"MLflow run {run_id}, which was deleted" in result.output, result.output
    assert "Traceback" not in result.output and (not out.exists() or not any(out.iterdir()))
    result = _cli(["promote", "--run-ref", str(work / "eval" / "eval_run.json")])  # the same run, promoted
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"names run {run_id}, which was deleted" in result.output and "mlflow runs restore" in result.output


@pytest.mark.slow
def test_promoting_a_run_the_store_does_not_hold_says_so(work):
    (work / "mlflow.db").unlink()
    result = _cli(["promote", "--run-ref", str(work / "eval" / "eval_run.json")])
    assert result.exit_code == 1 and "does not hold" in result.output, result.output


@pytest.mark.slow
def test_an_unreadable_training_state_is_ignored_and_training_starts_over(work):
    out = work / "out"
    args = stage_args("train", work / "params.yaml", out, work / "gen" / "data")
    out.mkdir()
    (out / "state.pt").write_bytes(b"PK\x03\x04 half a zip")  # what a disk that lost the last write may leave
    result = _invoke("train", args)
    assert result.exit_code == 0, result.output
    assert f"ignoring the saved training state: {out / 'state.pt'}" in result.output
    assert (out / "model.pt").read_bytes() == (work / "train" / "model.pt").read_bytes()  # a fresh start's result


def _train_from_an_unfinished_state(work: Path, out: Path, before=lambda state: None, **changes):
    """Run train on out/, holding the pipeline's state as if killed after epoch 1, with `changes` made to it."""
    import torch

    state = torch.load(work / "train" / "state.pt", weights_only=True)
    state.update(complete=False, epoch=1, **changes)
    out.mkdir()
    torch.save(state, out / "state.pt")
    before(state)
    return state, _invoke("train", stage_args("train", work / "params.yaml", out, work / "gen" / "data"))


@pytest.mark.slow
def test_a_state_whose_run_the_store_lacks_stops_before_training(work):
    """Resuming needs the state's MLflow run: without it the stage says so before it spends a minute training."""
    out = work / "out"
    _, result = _train_from_an_unfinished_state(work, out, run_id="0" * 32)
    assert result.exit_code == 1, result.output
    assert f"{out / 'state.pt'} resumes MLflow run {'0' * 32}, which sqlite:///" in result.output
    assert "cannot be reopened" in result.output and "mlflow runs restore" not in result.output
    assert "resuming after" not in result.output and "epoch   2" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"]


@pytest.mark.slow
def test_a_state_of_other_params_is_not_resumed(work):
    """An unfinished state saved for other params (or code, data, threads: the fingerprint) is set aside, with a
    note: training starts from epoch 1 in a new run and ends as a fresh start does."""
    out = work / "out"
    state, result = _train_from_an_unfinished_state(work, out, fingerprint="0" * 64)
    assert result.exit_code == 0, result.output
    assert f"note: {out / 'state.pt'} is from a run with other params" in result.output
    assert "resuming after" not in result.output and "epoch   1" in result.output
    assert state["run_id"] not in result.output  # a new run, not the state's
    assert (out / "model.pt").read_bytes() == (work / "train" / "model.pt").read_bytes()


@pytest.mark.slow
def test_a_state_whose_run_was_deleted_says_restore_it_or_delete_the_state(work):
    """A deleted (not purged) run: MLflow refuses to reopen it; the stage names both ways out."""
    from mlflow.tracking import MlflowClient

    def delete_its_run(state: dict) -> None:
        MlflowClient(f"sqlite:///{work / 'mlflow.db'}").delete_run(state["run_id"])

    out = work / "out"
    state, result = _train_from_an_unfinished_state(work, out, before=delete_its_run)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"resumes MLflow run {state['run_id']}, which was deleted" in result.output
    assert f"mlflow runs restore --run-id {state['run_id']}) or delete {out / 'state.pt'}" in result.output
    assert "resuming after" not in result.output and sorted(p.name for p in out.iterdir()) == ["state.pt"]


def _cli(args: list[str], stdin: bytes | None = None):
    from seq2seq.cli import main

    return CliRunner().invoke(main, args, input=stdin)


@pytest.mark.parametrize(
    ("profile", "extra", "message"),
    [
        ("", [], "a profile maps sections to keys and values, not a NoneType"),
        ("- 1\n- 2\n", [], "not a list"),
        ("train: {lr: [1\n", [], "not YAML"),
        ("train: 5\n", [], "train: must map keys to values, got 5"),
        ("nosuch: {a: 1}\n", [], "nosuch: not a section of"),
        ("train:\n", ["--set", "train.lr=-1"], "train.lr: must be > 0"),
        (None, ["--set", "train.lr=[1"], "the value is not YAML"),
    ],
    ids=[
        "empty",
        "a list",
        "broken YAML",
        "a section that is not a mapping",
        "unknown section",
        "an empty section, then --set",
        "broken --set",
    ],
)
def test_apply_profile_refuses_a_bad_profile_in_one_line(tmp_path, profile, extra, message):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    args = ["apply-profile", "--params", str(params), *extra]
    if profile is not None:
        (tmp_path / "profile.yaml").write_text(profile)
        args.append(str(tmp_path / "profile.yaml"))
    result = _cli(args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_gate_promote_and_predict_name_the_bad_file(tmp_path):
    bad, missing = tmp_path / "bad.json", tmp_path / "eval.json"
    bad.write_text("{not json")
    gate = ["gate", "--params", str(ROOT / "params.yaml"), "--baseline-file", str(bad), "--metrics"]
    result = _cli([*gate, str(bad)])
    assert result.exit_code == 1 and f"{bad}: not a metrics file" in result.output, result.output
    result = _cli([*gate, str(missing)])
    assert result.exit_code == 1 and f"{missing}: no such metrics file" in result.output, result.output
    (tmp_path / "ref.json").write_text("{}")
    result = _cli(["promote", "--run-ref", str(tmp_path / "ref.json")])
    assert result.exit_code == 1 and "ref.json: not a run reference" in result.output, result.output
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"\x08\x07 half a protobuf")
    (export / "export.json").write_text('{"max_src_len": 8}')
    (export / "vocab.json").write_text('{"tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "1"]}')
    result = _cli(["predict", "--model", str(export)], b"1\n")
    assert result.exit_code == 1 and f"{export / 'model.onnx'}: not a loadable ONNX model" in result.output
    assert "Traceback" not in result.output
    result = _cli(["predict", "--model", str(export)], b"")
    assert result.exit_code == 1 and "Error: no input: give one source a line" in result.output, result.output
    result = _cli(["predict", "--model", str(tmp_path / "nosuch")], b"1\n")
    assert result.exit_code == 1 and f"{tmp_path / 'nosuch'}: no such export folder" in result.output, result.output


def test_a_state_resumes_only_the_code_that_saved_it(tmp_path):
    """Edit the model between a kill and the rerun: the state of the old code is not resumed (it may not even load)."""
    from seq2seq.checkpoint import code_files, fingerprint
    from seq2seq.params import load_params

    files = code_files(ROOT / "stages" / "train.py")
    assert {ROOT / "stages" / "train.py", ROOT / "seq2seq" / "model.py", ROOT / "seq2seq" / "train.py"} <= set(files)
    copies = []
    for path in files:
        copies.append(tmp_path / path.parent.name / path.name)  # stages/train.py and seq2seq/train.py both
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy(path, copies[-1])
    params = load_params(ROOT / "params.yaml").flat("data", "model", "train")
    before = fingerprint(params, "data", copies, threads=2)
    assert fingerprint(params, "data", copies, threads=2) == before
    assert fingerprint(params, "data", copies, threads=1) != before  # another summation order
    with (tmp_path / "seq2seq" / "model.py").open("a") as model:
        model.write("# an edit\n")
    assert fingerprint(params, "data", copies, threads=2) != before


@pytest.mark.slow
def test_an_output_the_stage_cannot_write_is_one_line(tmp_path):
    """A full disk or a folder it cannot write to (here: a file where the folder goes, which root cannot chmod
    its way past either): one line naming the path, exit 1."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "metrics").write_text("a file, not a folder")
    args = stage_args("generate", params, tmp_path / "out", tmp_path)
    args[args.index("--metrics") + 1] = str(tmp_path / "metrics" / "data.json")
    result = _invoke("generate", args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output == f"Error: {tmp_path / 'metrics'}: File exists\n"  # what mkdir says of it
