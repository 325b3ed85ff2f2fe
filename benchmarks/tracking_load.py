"""What one tracking server holds: K client processes at once, each logging R runs of E epochs (a log_batch an
epoch, a small artifact a run) to an `mlflow server` on SQLite or on PostgreSQL (a throw-away cluster, as the tests
start it). Prints, per backend and K: runs sent and landed (FINISHED, with every epoch's point read back), the
errors the clients got (each one counted, never retried silently past MLflow's own retries), p50/p95 latency of a
log_batch, and runs landed per second of wall time; writes JSON.

    python -m benchmarks.tracking_load                                   # K = 2, 8, 32; 5 runs of 10 epochs each
    python -m benchmarks.tracking_load --clients 2 --backend sqlite --runs 2
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shlex
import statistics
import sys
import time
from pathlib import Path

import click

from benchmarks.provenance import stamp


def _warm() -> None:
    """A client process imports MLflow (seconds of CPU) before the clock starts."""
    import mlflow.tracking  # noqa: F401


def _client(uri: str, experiment: str, client_id: int, runs: int, epochs: int) -> dict:
    """One client process: its runs, the latency of each log_batch, and every error it got (type: message)."""
    import os

    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"})
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a "View run" line per run
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    latencies, errors, finished = [], [], 0
    for r in range(runs):
        try:
            run = client.create_run(experiment_id, run_name=f"client{client_id}-run{r}")
            run_id = run.info.run_id
            client.log_batch(run_id, params=[], tags=[])
            for epoch in range(1, epochs + 1):
                now = int(time.time() * 1000)
                batch = [Metric(f"train/{k}", 1.0 / epoch + client_id, now, epoch) for k in ("loss", "acc", "lr")]
                start = time.perf_counter()
                client.log_batch(run_id, metrics=batch)
                latencies.append(time.perf_counter() - start)
            client.log_text(run_id, f"client {client_id} run {r}\n", "notes/run.txt")
            client.set_terminated(run_id, "FINISHED")
            finished += 1
        except Exception as err:  # counted and reported: a lost run is never silent
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    return {"latencies": latencies, "errors": errors, "finished": finished}


def _landed(uri: str, experiment: str, epochs: int) -> int:
    """Runs the server holds as FINISHED with all `epochs` points of a metric and their artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=5000)
    complete = 0
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "notes")]
        complete += run.info.status == "FINISHED" and len(history) == epochs and artifacts == ["notes/run.txt"]
    return complete


def _load(uri: str, k: int, runs: int, epochs: int) -> dict:
    from mlflow.tracking import MlflowClient

    experiment = f"load-k{k}"
    MlflowClient(uri).create_experiment(experiment)
    with multiprocessing.get_context("spawn").Pool(k, initializer=_warm) as pool:
        pool.map(time.sleep, [0.5] * k)  # every worker is up, MLflow imported, before the clock starts
        start = time.perf_counter()
        results = pool.starmap(_client, [(uri, experiment, i, runs, epochs) for i in range(k)])
        wall = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = [e for r in results for e in r["errors"]]
    landed = _landed(uri, experiment, epochs)
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {
        "clients": k,
        "runs_sent": k * runs,
        "runs_finished_by_clients": sum(r["finished"] for r in results),
        "runs_landed": landed,
        "errors": len(errors),
        "error_samples": errors[:5],
        "p50_ms": q[9] * 1000,
        "p95_ms": q[18] * 1000,
        "runs_per_s": landed / wall,
        "wall_s": wall,
    }


@contextlib.contextmanager
def _backend(name: str, folder: Path):
    """The backend store URI: a SQLite file, or a throw-away PostgreSQL cluster's database."""
    if name == "sqlite":
        yield f"sqlite:///{folder}/mlflow.db"
    else:
        from tests.helpers import postgres_cluster  # the tests' throw-away cluster (imports torch: not in clients)

        with postgres_cluster() as uri:
            yield uri


@click.command()
@click.option("--backend", "backends", multiple=True, default=("sqlite", "postgres"), show_default=True)
@click.option("--clients", default="2,8,32", show_default=True, help="K values, comma-separated.")
@click.option("--runs", default=5, show_default=True, help="Runs per client.")
@click.option("--epochs", default=10, show_default=True, help="log_batch calls per run.")
@click.option("--workers", default=4, show_default=True, help="mlflow server --workers (MLflow's default: 4).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/tracking_load.json"))
def main(backends, clients, runs, epochs, workers, out) -> None:
    import tempfile

    from tests.helpers import env, server

    rows = []
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, _backend(backend, Path(tmp)) as store:
            cmd = ["mlflow", "server", "--backend-store-uri", store, "--artifacts-destination", f"{tmp}/artifacts"]
            with server([*cmd, "--workers", str(workers)], "/health", Path(tmp) / "server.log", env=env()) as uri:
                for k in (int(x) for x in clients.split(",")):
                    row = {"backend": backend, **_load(uri, k, runs, epochs)}
                    rows.append(row)
                    click.echo(
                        f"{backend:9s} K={k:3d}  runs {row['runs_landed']}/{row['runs_sent']} landed  "
                        f"errors {row['errors']}  log_batch p50 {row['p50_ms']:.1f} ms p95 {row['p95_ms']:.1f} ms  "
                        f"{row['runs_per_s']:.2f} runs/s"
                    )
    command = shlex.join(["python", "-m", "benchmarks.tracking_load", *sys.argv[1:]])
    result = {"runs_per_client": runs, "epochs": epochs, "server_workers": workers, "rows": rows}
    out.write_text(json.dumps(result | {"provenance": stamp(command)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
