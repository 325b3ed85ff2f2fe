"""`seq2seq compare` and `seq2seq link`: the variants table, its formats, the offline report, experiment links."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from seq2seq import tracking
from seq2seq.cli import main
from seq2seq.compare import exp_links, render, variant_table


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "tags.mlflow.runName": ["small", "big", "fast"],
            "params.model.hidden_dim": ["64", "128", "64"],
            "params.train.lr": ["0.001", "0.001", "0.003"],
            "params.data.task": ["reverse"] * 3,  # the same everywhere: left out
            "metrics.test/exact_match": [0.9, 0.95, 0.9],
            "metrics.test/loss": [0.2, 0.1, 0.15],
        }
    )


def test_table_keeps_differing_params_and_sorts():
    table = variant_table(_runs(), "test/exact_match")
    assert list(table.columns) == ["run", "run_id", "model.hidden_dim", "train.lr", "test/exact_match", "test/loss"]
    assert list(table["run"]) == ["big", "fast", "small"]  # best first; a tie goes to the lower test loss
    assert list(variant_table(_runs(), "test/loss")["run"]) == ["big", "fast", "small"]  # a loss: lowest first
    assert list(variant_table(_runs(), "test/loss", ascending=False)["run"]) == ["small", "fast", "big"]
    with pytest.raises(KeyError, match="cannot sort by 'bleu'"):
        variant_table(_runs(), "bleu")


def test_numeric_params_sort_as_numbers_and_unnamed_runs_show_their_id():
    runs = _runs()
    runs.loc[2, "tags.mlflow.runName"] = None
    runs.loc[2, "params.model.hidden_dim"] = "8"
    table = variant_table(runs, "model.hidden_dim", ascending=True)  # as text: "128" < "64" < "8"
    assert list(table["model.hidden_dim"]) == ["8", "64", "128"] and list(table["run"]) == ["c", "small", "big"]
    runs.loc[2, "params.model.hidden_dim"] = "wide"  # not all numbers: as text
    assert list(variant_table(runs, "model.hidden_dim", ascending=True)["model.hidden_dim"]) == ["128", "64", "wide"]


def test_formats():
    table = variant_table(_runs(), "test/exact_match")
    markdown = [line.split("|")[1:-1] for line in render(table, "md").splitlines()]
    assert [c.strip() for c in markdown[0]] == ["run", "run_id", "model.hidden_dim", "train.lr", *table.columns[-2:]]
    assert [c.strip() for c in markdown[2]] == ["big", "b", "128", "0.001", "0.95", "0.1"]
    assert pd.read_csv(io.StringIO(render(table, "csv")))["run"].tolist() == ["big", "fast", "small"]
    assert json.loads(render(table, "json"))[0] == {
        "run": "big", "run_id": "b", "model.hidden_dim": "128", "train.lr": "0.001", "test/exact_match": 0.95,
        "test/loss": 0.1,
    }  # fmt: skip
    assert "big" in render(table, "table")
    table.loc[1, ["run", "test/loss"]] = "a|b", None  # a pipe in a name is escaped, a missing metric blank
    row = render(table, "md").splitlines()[3]
    assert row.startswith("| a\\|b ") and row.endswith("|             |"), row


def _exp(rev: str, name: str, run_id: str | None) -> dict:
    metrics = {"metrics/mlflow_run.json": {"data": {"run_id": run_id}}} if run_id else {}
    return {"revs": [{"rev": rev, "name": name, "data": {"metrics": metrics}}]}


def test_exp_links_from_dvc_exp_show():
    baseline_metrics = {"metrics/mlflow_run.json": {"data": {"run_id": "r0"}}}
    shown = [
        {
            "rev": "abc",
            "name": "main",
            "data": {"metrics": baseline_metrics},  # the baseline is no experiment: not linked
            "experiments": [_exp("e1", "exp-one", "r1"), _exp("e2", "failed-one", None)],
        }
    ]
    assert exp_links(shown, "metrics/mlflow_run.json") == [{"run_id": "r1", "name": "exp-one", "rev": "e1"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with three known runs: (name, lr, hidden, val_loss per epoch, test exact match)."""
    root = tmp_path_factory.mktemp("compare")
    env = {"DVC_ROOT": str(root)}
    known = [("slow", 0.001, 64, [1.0, 0.5, 0.3], 0.7), ("quick", 0.003, 64, [0.8, 0.2, 0.1], 0.9)]
    known.append(("wide", 0.003, 128, [0.7, 0.15, 0.05], 0.95))
    for name, lr, hidden, losses, exact in known:
        with tracking.ending(tracking.open_run("train", env={**env, "DVC_EXP_NAME": name})) as run:
            run.log_params({"train.lr": lr, "model.hidden_dim": hidden, "data.task": "reverse"})
            for epoch, loss in enumerate(losses, start=1):
                run.log_metrics({"val/loss": loss}, step=epoch)
            run.log_metrics({"test/exact_match": exact, "test/loss": losses[-1]})
    with pytest.raises(RuntimeError), tracking.ending(tracking.open_run("train", env=env)):
        raise RuntimeError("failed runs are not variants")
    return root


def test_compare_reads_the_store(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["compare", "--format", "csv", "--html", str(report), "--param", "train.lr"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert table["run"].tolist() == ["wide", "quick", "slow"]  # FINISHED only, best test exact match first
    assert set(table.columns) == {"run", "run_id", "model.hidden_dim", "train.lr", "test/exact_match", "test/loss"}
    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "<script" not in page and "http" not in page

    result = CliRunner().invoke(main, ["compare", "--tag", "mlflow.runName=quick", "--format", "json"])
    assert [row["run"] for row in json.loads(result.stdout)] == ["quick"]
    result = CliRunner().invoke(main, ["compare", "--sort-by", "nope"])
    assert result.exit_code == 2 and "cannot sort by 'nope'" in result.output
    assert "test sets" not in CliRunner().invoke(main, ["compare"]).stderr  # one test set (untagged: unknown)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.resolve_tracking_uri())
    for run_id, digest in zip(table["run_id"], ("a", "a", "b"), strict=True):  # the last run: another task's
        client.set_tag(run_id, tracking.TEST_DATA_TAG, digest)
    result = CliRunner().invoke(main, ["compare"])
    assert result.exit_code == 0 and "note: these runs were tested on 2 different test sets" in result.stderr


def test_runs_sharing_a_name_each_get_a_curve_and_tags_may_hold_quotes(tmp_path, monkeypatch):
    """A run continuing another keeps its name: the report draws both. A tag value with a quote filters (MLflow's
    filter strings cannot hold one)."""
    env = {"DVC_ROOT": str(tmp_path)}
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for lr, losses in ((0.001, [1.0, 0.5]), (0.003, [0.8, 0.2])):
        with tracking.ending(tracking.open_run("train", env={**env, "DVC_EXP_NAME": "same"})) as run:
            run.log_params({"train.lr": lr})
            run.set_tags({"note": "it's a \\ test"})
            for epoch, loss in enumerate(losses, start=1):
                run.log_metrics({"val/loss": loss}, step=epoch)
            run.log_metrics({"test/exact_match": 0.5})
    drawn = {}
    monkeypatch.setattr("seq2seq.compare.curves_png", lambda histories, metric: drawn.update(histories) or "")
    # The page names the store: a URI with credentials (a server's, from a CI secret) is written without them
    shown = "https://ci:S3CRET@mlflow.example.com"
    monkeypatch.setattr(tracking, "resolve_tracking_uri", lambda: shown)
    args = ["compare", "--tag", "note=it's a \\ test", "--format", "json", "--html", str(tmp_path / "r.html")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["run"] for row in rows] == ["same", "same"]
    assert sorted(drawn) == sorted(f"same ({row['run_id'][:8]})" for row in rows)
    assert sorted(list(h["value"]) for h in drawn.values()) == [[0.8, 0.2], [1.0, 0.5]]
    page = (tmp_path / "r.html").read_text()
    assert "store: https://***@mlflow.example.com" in page and "S3CRET" not in page


def test_the_report_axis_must_be_a_column_of_the_table(tmp_path):
    from seq2seq.compare import write_html

    table = variant_table(_runs(), "test/exact_match")
    with pytest.raises(KeyError, match=r"'bleu' is not a param that differs: model\.hidden_dim, train\.lr"):
        write_html(tmp_path / "r.html", table, "test/exact_match", "bleu", "test/exact_match")
    assert not (tmp_path / "r.html").exists()


def test_ties_on_the_sort_key_go_to_the_lower_test_loss():
    """Three variants at the same test exact match: the best first is the one promotion would pick (lower loss)."""
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "tags.mlflow.runName": ["worst", "best", "middle"],
            "params.train.lr": ["0.1", "0.003", "0.01"],
            "metrics.test/exact_match": [1.0, 1.0, 1.0],
            "metrics.test/loss": [0.3, 0.01, 0.1],
        }
    )
    assert variant_table(runs, "test/exact_match")["run"].tolist() == ["best", "middle", "worst"]
    assert variant_table(runs, "test/loss", ascending=False)["run"].tolist() == ["worst", "middle", "best"]


def test_ui_url_opens_the_runs_table_in_the_model_training_view(store, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(store))
    result = CliRunner().invoke(main, ["ui-url", "--port", "5005"])
    assert result.exit_code == 0, result.output
    experiment = tracking.experiment_id_of({"DVC_ROOT": str(store)})
    expected = f"http://127.0.0.1:5005/#/experiments/{experiment}/runs?workflowType=machine_learning"
    assert result.output.strip() == expected


def test_g2p_runs_show_their_error_rates_lowest_first():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "tags.mlflow.runName": ["big", "small"],
            "params.model.hidden_dim": ["512", "128"],
            "metrics.test/wer": [0.31, 0.42],
            "metrics.test/per": [0.07, 0.10],
        }
    )
    table = variant_table(runs, "test/wer")
    assert table["run"].tolist() == ["big", "small"] and {"test/wer", "test/per"} <= set(table.columns)
