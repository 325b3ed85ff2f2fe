"""Strict params: every bad case names the file and the key, exits 2 and writes nothing."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from seq2seq.params import ParamsError, load_params
from tests.helpers import ROOT, load_stage, stage_args

BAD_CASES = [
    # (section, key, value or DELETE, fragment of the message)
    ("train", "lr", 0, "train.lr: must be > 0"),
    ("train", "lr", -0.1, "train.lr: must be > 0"),
    ("train", "clip", 0.0, "train.clip: must be > 0"),
    ("train", "lr", "fast", "train.lr: must be a number"),
    ("train", "lr", float("inf"), "train.lr: must be a finite number, got inf"),  # failed after an epoch
    ("train", "clip", float("nan"), "train.clip: must be a finite number, got nan"),
    ("train", "batch_size", 1.5, "train.batch_size: must be an integer"),
    ("train", "batch_size", True, "train.batch_size: must be an integer"),
    ("train", "device", "tpu", "train.device: must be one of"),
    ("train", "tf_end", 1.5, "train.tf_end: must be in [0, tf_start]"),
    ("train", "bf16", "yes", "train.bf16: must be true or false"),
    ("train", "patience", 0, "train.patience: must be >= 1"),
    ("train", "nproc", 0, "train.nproc: must be >= 1"),
    ("train", "nproc", 128, "train.batch_size: must be >= nproc (128)"),
    ("train", "compile", "yes", "train.compile: must be true or false"),
    ("model", "dropout", 1.0, "model.dropout: must be in [0, 1)"),
    ("model", "dropout", -0.1, "model.dropout: must be in [0, 1)"),
    ("model", "hidden_dim", 0, "model.hidden_dim: must be >= 1"),
    ("model", "hiden_dim", 64, "model.hiden_dim: unknown key"),
    ("model", "num_layers", "DELETE", "model.num_layers: missing key"),
    ("data", "max_len", 1, "data.max_len: must be >= min_len"),
    ("data", "long_max_len", 12, "data.long_max_len: must be > max_len"),
    ("data", "task", "translate", "data.task: must be one of"),
    ("data", "n_val", 0, "data.n_val: must be >= 1"),
    ("export", "max_tgt_len", 40, "export.max_tgt_len: must be > max_src_len (40)"),
]


def _write(tmp_path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_load(default_params, tmp_path):
    params = load_params(_write(tmp_path, default_params))
    assert params.flat()["model.hidden_dim"] == default_params["model"]["hidden_dim"]
    assert set(params.flat()) == {f"{s}.{k}" for s, keys in default_params.items() for k in keys}


def test_params_read_as_dvc_reads_them(default_params, tmp_path):
    """YAML 1.2 like DVC: `1e-3` is a float (PyYAML would read a string), `yes` is a string, not a bool (refused)."""
    text = _write(tmp_path, default_params).read_text()
    path = tmp_path / "exponent.yaml"
    path.write_text(text.replace(f"lr: {default_params['train']['lr']}", "lr: 1e-3"))
    assert "lr: 1e-3" in path.read_text() and load_params(path).train.lr == 0.001
    path.write_text(text.replace("bf16: true", "bf16: yes"))
    with pytest.raises(ParamsError, match=r"train\.bf16: .*yes"):
        load_params(path)


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_CASES)
def test_bad_params_are_named(default_params, tmp_path, section, key, value, message):
    params = copy.deepcopy(default_params)
    if value == "DELETE":
        del params[section][key]
    else:
        params[section][key] = value
    path = _write(tmp_path, params)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_unknown_and_missing_sections(default_params, tmp_path):
    with pytest.raises(ParamsError, match="optimizer: unknown section"):
        load_params(_write(tmp_path, {**default_params, "optimizer": {}}))
    with pytest.raises(ParamsError, match="train: missing section"):
        load_params(_write(tmp_path, {k: v for k, v in default_params.items() if k != "train"}))
    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "broken.yaml")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["generate", "train"])
def test_stage_exits_2_and_writes_nothing(default_params, tmp_path, monkeypatch, stage):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store's home, were one opened
    params = copy.deepcopy(default_params)
    params["train"]["lr"] = -1
    path = _write(tmp_path, params)
    out = tmp_path / "out"
    result = CliRunner().invoke(load_stage(stage), stage_args(stage, path, out, data=tmp_path))
    assert result.exit_code == 2, result.output
    assert f"Error: {path}: train.lr: must be > 0" in result.output
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_too_small_task_space_is_a_params_error(default_params, tmp_path):
    params = copy.deepcopy(default_params)
    params["data"].update(num_symbols=2, min_len=1, max_len=2, n_val=50)
    path = _write(tmp_path, params)
    out = tmp_path / "out"
    result = CliRunner().invoke(load_stage("generate"), stage_args("generate", path, out, data=tmp_path))
    assert result.exit_code == 2, result.output
    assert "data.n_val: could not draw 50 val sources unseen in train" in result.output
    assert not out.exists()


def test_apply_profile_reads_overrides_as_dvc_exp_run_does(tmp_path):
    """`--set train.lr=1e-3` (make retrain OVERRIDES=...) is the float 0.001, as with `dvc exp run -S`; the file's
    comments stay."""
    from seq2seq.cli import main

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    result = CliRunner().invoke(main, ["apply-profile", "--params", str(path), "--set", "train.lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert load_params(path).train.lr == 0.001 and "# the seed's sizes" in path.read_text()


def test_apply_profile_to_a_params_file_that_is_not_there_is_one_line(tmp_path):
    from seq2seq.cli import main

    missing = tmp_path / "params.yaml"
    result = CliRunner().invoke(main, ["apply-profile", "--params", str(missing), "--set", "train.lr=1e-3"])
    assert result.exit_code == 2 and result.output == f"Error: {missing}: cannot read: No such file or directory\n"
    assert not missing.exists()


SIZES = [
    # (section, key, value, the key named, what the message says it needs)
    ("model", "hidden_dim", 1_000_000, "model.hidden_dim", "GiB to train at batch size"),
    ("data", "num_symbols", 200_000_000, "data.num_symbols", "GiB to train at batch size"),
    ("data", "n_train", 8_000_000_000, "data.n_train", "GiB to generate"),
]


@pytest.mark.parametrize(("section", "key", "value", "named", "needs"), SIZES)
def test_sizes_the_machine_cannot_hold_are_refused(default_params, tmp_path, section, key, value, named, needs):
    """They validate as numbers, then ended in a memory traceback or a generate that never finished: refused by
    `seq2seq check-params` and the check stage, naming the key, what it needs and what the machine has."""
    from seq2seq.cli import main
    from seq2seq.sizes import load_checked

    params = copy.deepcopy(default_params)
    params[section][key] = value
    path = _write(tmp_path, params)
    load_params(path)  # valid as a value
    with pytest.raises(ParamsError, match=rf"^{path}: {named}: .*{needs}.*; this machine has [\d.,]+ GiB of RAM$"):
        load_checked(path)
    result = CliRunner().invoke(main, ["check-params", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and named in result.output, result.output
    out = tmp_path / "check.txt"
    result = CliRunner().invoke(load_stage("check"), ["--params", str(path), "--out", str(out)])
    assert result.exit_code == 2 and named in result.output and not out.exists(), result.output


def test_the_size_check_counts_the_real_parameters_without_torch_dynamo():
    """The meta-device build skips the weights' fills (their meta kernels import torch._dynamo, a third of the check
    stage's time): the counts are still the model's own, and the check imports no dynamo."""
    script = (
        "import sys\n"
        "from seq2seq.model import ModelConfig, Seq2Seq\n"
        "from seq2seq.sizes import parameter_counts\n"
        "cfg = ModelConfig(emb_dim=24, hidden_dim=40, num_layers=2, dropout=0.1)\n"
        "counts = parameter_counts(cfg, 17)\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
        "real = {n: p.numel() for n, p in Seq2Seq(cfg, 17, 0, 1, 2).named_parameters()}\n"
        "assert counts == real, (counts, real)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_default_and_the_seeds_sizes_fit_this_machine(default_params, tmp_path):
    from seq2seq.sizes import load_checked

    assert load_checked(_write(tmp_path, default_params)).model.hidden_dim == default_params["model"]["hidden_dim"]
    seed = copy.deepcopy(default_params)
    seed["model"].update(emb_dim=256, hidden_dim=512, num_layers=2, dropout=0.5)
    seed["data"].update(num_symbols=996)
    load_checked(_write(tmp_path, seed))
