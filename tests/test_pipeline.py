"""End to end: the real `dvc repro` on a tiny profile in a temp copy of the repo, with a real MLflow store there
(conftest's `tiny_pipeline`, run once a session, copied for this module)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from seq2seq.checkpoint import load_checkpoint
from seq2seq.data import dataset_digest
from seq2seq.params import load_params
from seq2seq.tracking.registry import REGISTERED_MODEL
from tests.helpers import ROOT, copy_repo, env, run, server, set_params, tiny_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory) -> Path:
    return copy_repo(tiny_pipeline, tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def client(repo):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo}/mlflow.db")


def test_outputs_are_written(repo):
    for split in ("train", "val", "test", "test_long"):
        assert (repo / "data" / f"{split}.parquet").is_file()
    data_metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert data_metrics["n_train"] == 256 and data_metrics["overlap_test"] == 0
    train_metrics = json.loads((repo / "metrics" / "train.json").read_text())
    assert {"val_loss", "val_exact_match", "best_epoch", "epochs_run"} <= set(train_metrics)
    history = (repo / "plots" / "train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss") and len(history) == 1 + train_metrics["epochs_run"]
    model, vocab, payload = load_checkpoint(repo / "models" / "model.pt")
    assert model.cfg.hidden_dim == 32 and len(vocab) == 12 and payload["epoch"] == train_metrics["best_epoch"]
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    for split in ("test", "test_long"):
        assert {"loss", "perplexity", "token_acc", "exact_match", "bleu"} == set(evaluation[split])
        by_length = (repo / "plots" / "eval_by_length" / f"{split}.csv").read_text().splitlines()
        assert by_length[0] == "length,examples,exact_match" and len(by_length) > 1
    export = {p.name for p in (repo / "models" / "export").iterdir()}
    assert export == {"program.pt2", "model.onnx", "vocab.json", "export.json", "MODEL_CARD.md", "mlflow_run.json"}
    assert "## How to load" in (repo / "models" / "export" / "MODEL_CARD.md").read_text()


def test_mlflow_run_holds_params_metrics_tags_and_artifacts(repo, client):
    ref = json.loads((repo / "metrics" / "mlflow_run.json").read_text())
    logged = client.get_run(ref["run_id"])
    assert logged.info.status == "FINISHED"
    # One run holds every stage: the params of all sections, train's curves, evaluate's and export's results.
    pipeline_params = load_params(repo / "params.yaml").flat("data", "model", "train", "evaluate", "export")
    assert logged.data.params == {k: str(v) for k, v in pipeline_params.items()}
    assert {f"stage.{s}" for s in ("train", "evaluate", "export")} <= set(logged.data.tags)
    # Named in sections, which MLflow's chart view groups by (train/, val/, test/, test_long/, summary/)
    assert {"test/exact_match", "test_long/exact_match", "test/bleu", "test/perplexity"} <= set(logged.data.metrics)
    assert {name.split("/")[0] for name in logged.data.metrics} == {"train", "val", "test", "test_long", "summary"}
    epochs = json.loads((repo / "metrics" / "train.json").read_text())["epochs_run"]
    for key in ("train/loss", "val/loss", "val/exact_match", "train/grad_norm", "train/lr", "train/tokens_per_s"):
        assert [m.step for m in client.get_metric_history(logged.info.run_id, key)] == list(range(1, epochs + 1)), key
    head = run(["git", "rev-parse", "HEAD"], repo).strip()
    assert logged.data.tags["git_commit"] == head and len(logged.data.tags["data_digest"]) == 64
    assert logged.data.tags["test_data_digest"] == dataset_digest(repo / "data", "test*.parquet")  # promotion's
    assert logged.data.tags["torch_threads"] == env()["OMP_NUM_THREADS"]  # what the stages ran with
    assert logged.data.metrics["summary/best_epoch"] >= 1 and logged.data.metrics["summary/epochs_run"] == epochs
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"params.yaml", "plots", "attention", "predictions"} <= artifacts
    plots = {a.path for a in client.list_artifacts(logged.info.run_id, "plots")}
    assert plots == {"plots/loss_curves.png", "plots/exact_match_by_length.png"}
    assert len(client.list_artifacts(logged.info.run_id, "attention")) == 2
    assert logged.info.artifact_uri.startswith((repo / "mlruns").as_uri())
    assert logged.data.tags["model_uri"].startswith("models:/m-")
    # The logged model: named after its run, carrying the test metrics (the experiment's Models view).
    model = client.get_logged_model(logged.data.tags["model_uri"].removeprefix("models:/"))
    assert model.name == f"seq2seq-{logged.info.run_name}"
    assert {m.key: m.value for m in model.metrics}["test/exact_match"] == logged.data.metrics["test/exact_match"]
    # What the runs table shows in its Source and Dataset columns.
    assert logged.data.tags["mlflow.source.name"] == "python -m stages.train"
    assert sorted(i.tags[0].value for i in logged.inputs.dataset_inputs) == ["train", "val"]


def test_exported_forms_predict_what_the_eager_model_does(repo):
    import torch

    from seq2seq.data import encode_split, read_split
    from seq2seq.serving import Predictor

    model, vocab, _ = load_checkpoint(repo / "models" / "model.pt")
    frame = read_split(repo / "data", "test")
    data = encode_split(frame, vocab)
    src, src_len, _ = data.batch(torch.arange(len(data)))
    eager, _ = model.generate(src, src_len, max_len=9)
    expected = [vocab.decode(row) for row in eager.tolist()]
    onnx = [r.prediction for r in Predictor(repo / "models" / "export").predict(list(frame["src"]))]
    assert onnx == expected
    program = torch.export.load(repo / "models" / "export" / "program.pt2").module()
    padded = torch.nn.functional.pad(src, (0, 8 - src.shape[1]), value=vocab.pad_id)
    assert [vocab.decode(row) for row in program(padded, src_len).tolist()] == expected


def test_promote_predict_and_the_pyfunc_in_a_fresh_process(repo, client, tmp_path):
    # Its own starting point, whatever ran before in this module's repo (the serve test promotes too).
    if client.search_registered_models(f"name = '{REGISTERED_MODEL}'"):
        client.delete_registered_model(REGISTERED_MODEL)
    out = run(["seq2seq", "promote", "--run-ref", "models/export/mlflow_run.json"], repo)
    assert "promoted: there is no champion yet" in out and "test/exact_match" in out
    assert "already is the champion" in run(["seq2seq", "promote", "--run-ref", "models/export/mlflow_run.json"], repo)

    sources = "1 2 3\n4 5 6 7\n"
    expected = run(["seq2seq", "predict", "--model", "models/export"], repo, stdin=sources)
    assert run(["seq2seq", "predict"], repo, stdin=sources) == expected  # the champion, through MLflow
    assert len(expected.splitlines()) == 2

    errors = run(
        ["seq2seq", "predict", "--model", "models/export"], repo, expect=1, stdin="1 2\n1 x\n1 2 3 4 5 6 7 1 2\n"
    )
    assert "line 2: unknown token 'x'" in errors and "line 3: 9 tokens, the model takes at most 8" in errors
    assert "Traceback" not in errors
    # Trained on sources of 2-5 tokens (the export records it): a 7-token line is predicted, with a warning
    assert json.loads((repo / "models" / "export" / "export.json").read_text())["trained_src_len"] == [2, 5]
    out = run(["seq2seq", "predict", "--model", "models/export"], repo, stdin="1 2 3 4 5 6 7\n")
    assert out.splitlines()[0] and "line 1: warning: 7 tokens, outside the trained lengths 2-5" in out

    # A fresh process elsewhere that cannot import the repo's package (its editable install is cut off): the
    # model must bring its own code. Only the MLflow store is shared.
    script = (
        "import sys\n"
        f"roots = ({str(repo)!r}, {str(ROOT)!r})\n"
        "sys.path[:] = [p for p in sys.path if p.rstrip('/') not in roots]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/seq2seq@champion')\n"
        "import seq2seq\n"
        "print(seq2seq.__file__)\n"
        "print('|'.join(model.predict(pd.DataFrame({'source': ['1 2 3', '4 5 6 7']}))['prediction']))\n"
    )
    out = run([sys.executable, "-c", script], tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{repo}/mlflow.db")
    module_file, predictions = out.strip().splitlines()[-2:]
    assert "/artifacts/code/seq2seq/" in module_file, module_file  # the copy inside the logged model
    assert predictions.split("|") == expected.splitlines()


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_mlflow_models_serve_answers_invocations(repo, tmp_path):
    cmd = ["mlflow", "models", "serve", "-m", "models:/seq2seq@champion", "--env-manager", "local"]
    uri_env = env(MLFLOW_TRACKING_URI=f"sqlite:///{repo}/mlflow.db")
    run(["seq2seq", "promote", "--run-ref", "models/export/mlflow_run.json"], repo)  # idempotent: no order needed
    with server(cmd, "/ping", tmp_path / "server.log", cwd=repo, env=uri_env) as base:
        url = f"{base}/invocations"
        status, body = _post(url, {"dataframe_split": {"columns": ["source"], "data": [["1 2 3"], ["4 5 6 7"]]}})
        assert status == 200, body
        local = run(["seq2seq", "predict", "--model", "models/export"], repo, stdin="1 2 3\n4 5 6 7\n")
        assert [row["prediction"] for row in json.loads(body)["predictions"]] == local.splitlines()
        assert [row["outside_trained_lengths"] for row in json.loads(body)["predictions"]] == [False, False]
        status, body = _post(url, {"dataframe_split": {"columns": ["source"], "data": [["3"]]}})  # trained on 2-5
        assert status == 200 and json.loads(body)["predictions"][0]["outside_trained_lengths"] is True, body
        status, body = _post(url, {"dataframe_split": {"columns": ["source"], "data": [["1 x"]]}})
        assert status == 400 and "unknown token 'x'" in body
        for rows, said in (([[3]], "row 0: not a string (3)"), ([["1 2"], [None]], "row 1: not a string (null)")):
            status, body = _post(url, {"dataframe_split": {"columns": ["source"], "data": rows}})
            assert status == 400 and said in body, (status, body)  # MLflow itself let both through (200)
        status, body = _post(url, {"not_a_format": []})
        assert 400 <= status < 500 and body


def test_repro_reruns_exactly_what_changed(repo, client):
    """Last in this file: it changes the module's repo (params, models, metrics) that the tests above read."""
    runs_before = len(client.search_runs([ref_experiment(repo)]))
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo)

    first_run = json.loads((repo / "metrics" / "mlflow_run.json").read_text())["run_id"]
    first_metrics = client.get_run(first_run).data.metrics
    set_params(repo, evaluate={"beam_size": 2})
    out = run(["dvc", "repro", "evaluate"], repo)  # up to the stage tested: export would add no run
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    # Re-evaluating a trained model opens a new run that continues the training run, which keeps its results.
    follow_up = client.get_run(json.loads((repo / "models" / "eval_run.json").read_text())["run_id"])
    assert follow_up.data.tags["continues_run"] == first_run and follow_up.data.params["evaluate.beam_size"] == "2"
    assert client.get_run(first_run).data.metrics == first_metrics

    # Up to `train` from here on: a new model rerunning evaluate and export is DVC's tracking of models/model.pt,
    # which every experiment test runs through.
    set_params(repo, train={"lr": 0.005})
    out = run(["dvc", "repro", "train"], repo)
    assert "Running stage 'train'" in out and "Running stage 'generate'" not in out

    set_params(repo, data={"max_len": 6})
    out = run(["dvc", "repro", "train"], repo)
    assert "Running stage 'generate'" in out and "Running stage 'train'" in out
    assert len(client.search_runs([ref_experiment(repo)])) == runs_before + 3


def ref_experiment(repo: Path) -> str:
    return json.loads((repo / "metrics" / "mlflow_run.json").read_text())["experiment_id"]


def test_killed_training_resumes_and_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL `dvc repro` mid-training, run it again: training resumes after the last complete epoch (same MLflow
    run), and the metrics file and checkpoint are byte-identical to those of a run that was never interrupted."""
    import signal

    import torch

    repo = tiny_repo(tmp_path, run_pipeline=False)
    # 1,500 examples: epochs long enough for the poll below to catch the run between its 2nd and 8th epoch.
    set_params(repo, data={"n_train": 1500}, train={"max_epochs": 8, "patience": 8, "min_delta": 0.0})
    run(["dvc", "repro", "generate"], repo)
    state_file = repo / "models" / "train_state.pt"
    # Up to `train` only: what follows it (evaluate, export) is not what is tested here.
    with (tmp_path / "killed.log").open("w") as log:
        killed = subprocess.Popen(
            ["dvc", "repro", "train"], cwd=repo, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while not (state_file.exists() and torch.load(state_file, weights_only=True)["epoch"] >= 2):
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage with it, no chance to clean up
    killed.wait()
    saved_epoch = torch.load(state_file, weights_only=True)["epoch"]
    assert 2 <= saved_epoch < 8

    out = run(["dvc", "repro", "train"], repo)
    assert f"resuming after epoch {saved_epoch}" in out
    resumed_metrics = (repo / "metrics" / "train.json").read_bytes()
    resumed_model = (repo / "models" / "model.pt").read_bytes()
    resumed_run = json.loads((repo / "metrics" / "mlflow_run.json").read_text())["run_id"]

    run(["dvc", "repro", "--force", "--single-item", "train"], repo)  # the state is complete: a fresh start
    assert (repo / "metrics" / "train.json").read_bytes() == resumed_metrics
    assert (repo / "models" / "model.pt").read_bytes() == resumed_model
    fresh_run = json.loads((repo / "metrics" / "mlflow_run.json").read_text())["run_id"]
    assert fresh_run != resumed_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    assert client.get_run(resumed_run).data.tags["resumed_after_epoch"] == str(saved_epoch)
    assert client.get_run(resumed_run).info.status == "FINISHED"


@pytest.mark.slow
def test_make_plots_renders_dvcs_plots_on_a_page_that_needs_no_network(tiny_pipeline, tmp_path):
    """`make plots`' own commands, run on the tiny pipeline: every plot's vegaEmbed call, the libraries inlined, and
    no script, style or image fetched from anywhere (DVC's default page loads Vega from a CDN)."""
    made = subprocess.run(["make", "-s", "-n", "plots"], cwd=ROOT, env=env(), capture_output=True, text=True)
    commands = made.stdout[made.stdout.index("mkdir -p .dvc/tmp") :].splitlines()
    work = copy_repo(tiny_pipeline, tmp_path)
    for command in commands:
        run(["bash", "-c", command], work)
    page = (work / "dvc_plots" / "index.html").read_text()
    defined = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert "window.vegaEmbed=" in page and page.count("vegaEmbed('#") == len(defined)  # each once, nothing else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page fetches something"
