"""The `seq2seq` console script: each command a thin click wrapper over the library (promotion, compare, gate,
report, profiles, tracking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from seq2seq.config import ParamsError, redact


class BadParams(click.ClickException):
    """Printed as `Error: <file>: <key>: <problem>`; exit code 2, like any other usage error."""

    exit_code = 2


class _Main(click.Group):
    """The library's errors end a command with one line, as in the stages (stages/common.py): bad params exit 2;
    a metrics file or git rev the gate cannot read, a run MLflow cannot use, a candidate it cannot register exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from seq2seq.gate import GateError
        from seq2seq.promotion import PromotionError
        from seq2seq.tracking import TrackingError

        try:
            return super().invoke(ctx)
        except ParamsError as err:  # profiles.ProfileError among them
            raise BadParams(str(err)) from None
        except (GateError, PromotionError, TrackingError) as err:
            raise click.ClickException(str(err)) from None


_FILE = click.Path(path_type=Path, dir_okay=False)
_EXISTING_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)
_params_option = click.option("--params", "params_path", type=_FILE, required=True, help="params.yaml to read.")


@click.group(cls=_Main)
def main() -> None:
    """Seq2Seq pipeline tools. The pipeline itself runs with `dvc repro`."""


@main.command("check-params")
@click.argument("path", type=_FILE, default="params.yaml")
def check_params(path: Path) -> None:
    """Validate a params file, its sizes against this machine too; print its flattened keys."""
    from seq2seq.sizes import load_checked

    for key, value in load_checked(path).flat().items():
        click.echo(f"{key} = {value}")


@main.command("tracking-uri")
def tracking_uri() -> None:
    """Print the MLflow store this project logs to (MLFLOW_TRACKING_URI or the SQLite default), credentials hidden."""
    from seq2seq.tracking import resolve_tracking_uri

    click.echo(redact(resolve_tracking_uri()))


@main.command("ui-url")
@click.option("--port", type=int, default=5000, show_default=True, help="The port `make ui` serves on.")
def ui_url(port: int) -> None:
    """Print the MLflow UI address of this project's runs table in the model-training view (not the GenAI one)."""
    from seq2seq.tracking import registry

    experiment = registry.experiment_id_of()
    click.echo(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning")


@main.command()
@click.option("--run-ref", type=_EXISTING_FILE, help="A run reference (make promote: the workspace's export).")
@click.option("--run", "run_id", help="An MLflow run id (seq2seq compare lists them).")
@click.option("--experiment", help="A DVC experiment's name (dvc exp show lists them).")
def promote(run_ref: Path | None, run_id: str | None, experiment: str | None) -> None:
    """Register a run's model as `seq2seq` (the candidate, named by one option); move the alias `champion` to it
    only if it beats the champion."""
    from seq2seq.promotion import register_candidate
    from seq2seq.tracking import registry

    candidacy = register_candidate(run_ref, run_id, experiment)
    click.echo(candidacy.summary())
    if candidacy.moves_alias:
        registry.set_champion(candidacy.version)
    click.echo(candidacy.verdict(f"{registry.REGISTERED_MODEL}@{registry.CHAMPION}"))


@main.command()
@click.option(
    "--model",
    "model_ref",
    default="models:/seq2seq@champion",
    show_default=True,
    help="An export folder (models/export) or an MLflow model URI.",
)
@click.argument("source", type=click.File("rb"), default="-")
def predict(model_ref: str, source) -> None:
    """Predict one output per input line (SOURCE: a file, or stdin), read as the model was trained to read it.

    Each prediction goes to stdout on its own line (empty for a refused line); problems go to stderr as
    `line N: ...`, and any refused line makes the exit code 1.
    """
    from seq2seq.tracking import registry

    lines = [line.rstrip(b"\r\n") for line in source]  # bytes: a line that is not UTF-8 is refused alone
    if not lines:
        raise click.ClickException("no input: give one source a line, in a file or on stdin")
    try:
        predictor = registry.load_predictor(model_ref)
    except (OSError, LookupError, ValueError) as err:  # InputError among them
        raise click.ClickException(f"cannot load the model {model_ref}: {err}") from None
    failed = 0
    for number, result in enumerate(predictor.predict(lines), start=1):
        click.echo(result.prediction or "")
        failed += bool(result.error)
        if result.error or result.warning:  # a warning: predicted, from a length the model never trained on
            click.echo(f"line {number}: {result.error or 'warning: ' + result.warning}", err=True)
    if failed:
        raise click.ClickException(f"{failed} of {len(lines)} lines could not be predicted")


@main.command()
@click.option("--run-ref-file", default="metrics/mlflow_run.json", show_default=True, help="As in dvc.yaml.")
def link(run_ref_file: str) -> None:
    """Tag MLflow runs with the commit of their DVC experiment (known only once `dvc exp run` has finished)."""
    from seq2seq.compare import DvcError, dvc_exp_links
    from seq2seq.tracking import registry

    try:
        links = dvc_exp_links(run_ref_file)
    except DvcError as err:
        raise click.ClickException(str(err)) from None
    tagged, elsewhere = registry.link_experiments(links)
    click.echo(f"tagged {tagged} runs of {len(links) - len(elsewhere)} experiments")
    if elsewhere:  # logged to another store (before MLFLOW_TRACKING_URI named a team's server), or deleted
        click.echo(f"left alone, their runs are not in this store: {', '.join(elsewhere)}")


@main.command()
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag (repeatable).")
@click.option("--sort-by", default="test/exact_match", show_default=True)
@click.option("--ascending/--descending", default=None, help="Default: best first (losses low, scores high).")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table", show_default=True)
@click.option("--html", "html_path", type=_FILE, help="Also write a report.")
@click.option("--metric", default="test/exact_match", show_default=True, help="The report's metric-vs-param plot.")
@click.option("--param", default=None, help="The report's x axis (default: the first param that differs).")
def compare(
    tags: tuple[str, ...],
    sort_by: str,
    ascending: bool | None,
    fmt: str,
    html_path: Path | None,
    metric: str,
    param: str,
) -> None:
    """Compare the runs in the MLflow store: the params that differ and the key metrics, one row per run.

    Filter by experiment with MLFLOW_EXPERIMENT_NAME, by tags with --tag (e.g. --tag dvc_exp_baseline_rev=abc).
    """
    from seq2seq import tracking
    from seq2seq.compare import render, variant_table, write_html
    from seq2seq.tracking import registry

    bad = [t for t in tags if "=" not in t]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE", param_hint="--tag")
    runs = registry.search_runs(dict(t.split("=", 1) for t in tags))
    if runs.empty:
        raise click.ClickException(f"no finished runs in {redact(tracking.resolve_tracking_uri())} match")
    digests = runs.get(f"tags.{tracking.TEST_DATA_TAG}")
    if digests is not None and (tested_on := digests.nunique()) > 1:  # other tasks or data params
        note = f"their test metrics compare only within one (--tag {tracking.TEST_DATA_TAG}=...)"
        click.echo(f"note: these runs were tested on {tested_on} different test sets; {note}", err=True)
    try:
        table = variant_table(runs, sort_by, ascending)
    except KeyError as err:
        raise click.BadParameter(str(err.args[0]), param_hint="--sort-by") from None
    click.echo(render(table, fmt))
    if html_path is None:
        return
    try:
        write_html(html_path, table, metric, param, sort_by)
    except KeyError as err:
        raise click.BadParameter(str(err.args[0])) from None
    click.echo(f"report: {html_path}", err=True)


# The options of gate and report: the workspace's metrics, and the baseline's (a git rev, or a file).
_metrics = click.option("--metrics", "metrics_path", type=_FILE, required=True)
_baseline = click.option("--baseline", "rev", default="HEAD", show_default=True, help="Git rev of the baseline.")
_baseline_file = click.option("--baseline-file", type=_EXISTING_FILE, help="A metrics JSON as the baseline instead.")


@main.command()
@_params_option
@_metrics
@_baseline
@_baseline_file
def gate(params_path: Path, metrics_path: Path, rev: str, baseline_file: Path | None) -> None:
    """Exit 1 when the workspace's metrics fall behind the baseline's beyond the `gate` tolerances, or any
    metric is missing or not finite; print the comparison either way."""
    from seq2seq.gate import gate_checks, table
    from seq2seq.params import load_params

    checks, label = gate_checks(load_params(params_path).gate, metrics_path, rev, baseline_file)
    click.echo(f"baseline: {label}\n{table(checks)}")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise click.ClickException(f"gate failed: {', '.join(f'{c.metric} {c.note}' for c in failed)}")
    click.echo("gate passed")


@main.command()
@_params_option
@_metrics
@click.option("--history", type=_EXISTING_FILE, required=True)
@click.option("--by-length", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option("--run-ref", type=_EXISTING_FILE, required=True)
@click.option("--out", type=_FILE, required=True, help="The markdown file.")
@_baseline
@_baseline_file
def report(params_path: Path, metrics_path: Path, rev: str, baseline_file: Path | None, **paths: Path) -> None:
    """Write a markdown retraining report (gate table, metrics and params diffs, PNG curves, the MLflow run)."""
    from seq2seq import report as pages  # `report` is this command
    from seq2seq.gate import gate_checks
    from seq2seq.params import load_params

    checks, label = gate_checks(load_params(params_path).gate, metrics_path, rev, baseline_file)
    pages.write(checks, label, rev=rev, baseline_file=baseline_file, **paths)
    click.echo(f"report: {paths['out']}")


@main.command("apply-profile")
@_params_option
@click.argument("profile", type=_EXISTING_FILE, required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="One more override (repeatable).")
def apply_profile(params_path: Path, profile: Path | None, overrides: tuple[str, ...]) -> None:
    """Merge a profile (a partial params file) and --set overrides into params.yaml, checked strictly first."""
    from seq2seq import profiles

    try:
        profiles.apply(params_path, profile, overrides)
    except profiles.OverrideError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    click.echo(f"{params_path}: applied {profile or ''} {' '.join(overrides)}".rstrip())
