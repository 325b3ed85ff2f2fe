"""The `seq2seq` console script, and the click glue the stages share (params loading with exit code 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the params import torch: a stage may start its MLflow helper first (stages/train.py)
    from seq2seq.params import Params


class BadParams(click.ClickException):
    """Printed as `Error: <file>: <key>: <problem>`; exit code 2, like any other usage error."""

    exit_code = 2


def load_params_or_exit(path: Path) -> Params:
    from seq2seq.params import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as err:
        raise BadParams(str(err)) from None


def params_option(func):
    return click.option(
        "--params",
        "params_path",
        type=click.Path(path_type=Path, dir_okay=False),
        required=True,
        help="params.yaml to read (DVC passes it).",
    )(func)


def input_path(flag: str, dest: str, directory: bool = False):
    """A required option naming an existing file (or folder) that a stage reads; dvc.yaml passes the path."""
    kind = click.Path(path_type=Path, exists=True, file_okay=not directory, dir_okay=directory)
    return click.option(flag, dest, type=kind, required=True)


def output_path(flag: str, dest: str, directory: bool = False):
    """A required option naming a file (or folder) that a stage writes; dvc.yaml passes the path."""
    return click.option(
        flag, dest, type=click.Path(path_type=Path, file_okay=not directory, dir_okay=directory), required=True
    )


def command_line(script: str) -> list[str]:
    """The current click command's options as a command line for `script` (to run it again, e.g. under torchrun)."""
    ctx = click.get_current_context()
    argv = [script]
    for param in ctx.command.params:
        if isinstance(param, click.Option) and ctx.params.get(param.name) is not None:
            argv += [param.opts[0], str(ctx.params[param.name])]
    return argv


@click.group()
def main() -> None:
    """Seq2Seq pipeline tools. The pipeline itself runs with `dvc repro`."""


@main.command("check-params")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), default="params.yaml")
def check_params(path: Path) -> None:
    """Validate a params file; print its flattened keys."""
    for key, value in load_params_or_exit(path).flat().items():
        click.echo(f"{key} = {value}")


@main.command("tracking-uri")
def tracking_uri() -> None:
    """Print the MLflow store this project logs to (MLFLOW_TRACKING_URI or the local SQLite default)."""
    from seq2seq.tracking import resolve_tracking_uri

    click.echo(resolve_tracking_uri())


@main.command("ui-url")
@click.option("--port", type=int, default=5000, show_default=True, help="The port `make ui` serves on.")
def ui_url(port: int) -> None:
    """Print the MLflow UI address of this project's runs table (the classic training view)."""
    from seq2seq.tracking import experiment_id_of

    click.echo(f"http://127.0.0.1:{port}/#/experiments/{experiment_id_of()}/runs")


@main.command()
@click.option(
    "--run-ref",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The run reference the export stage wrote (make promote passes models/export/mlflow_run.json).",
)
def promote(run_ref: Path) -> None:
    """Register the run's model as `seq2seq`; move the alias `champion` to it only if it beats the champion."""
    from seq2seq import tracking
    from seq2seq.promotion import KEY_METRIC, TIE_BREAKER, decide

    try:
        run_id = tracking.read_run_reference(run_ref)
        candidate = tracking.run_metrics(run_id)
    except tracking.RunUnavailable as err:
        raise click.ClickException(f"{run_ref} names {err}; {err.remedy()}retrain and export it") from None
    except tracking.TrackingError as err:
        raise click.ClickException(str(err)) from None
    current = tracking.champion()
    try:
        champion_metrics = tracking.run_metrics(current[1]) if current else None
    except tracking.RunUnavailable as err:  # nothing to compare against: replacing it unseen would be a guess
        raise click.ClickException(
            f"the champion, version {current[0]}, comes from {err}; {err.remedy()}move "
            f"the alias by hand (MlflowClient().set_registered_model_alias)"
        ) from None
    try:
        decision = decide(candidate, champion_metrics)
        version = tracking.register(run_id)
    except (KeyError, LookupError) as err:
        raise click.ClickException(str(err.args[0])) from None
    click.echo(f"{'metric':<18} {'candidate':>12} {'champion':>12}")
    for key in (KEY_METRIC, TIE_BREAKER):
        old = f"{champion_metrics[key]:.6g}" if champion_metrics else "-"
        click.echo(f"{key:<18} {candidate[key]:>12.6g} {old:>12}")
    champion_label = f"version {current[0]} (run {current[1]})" if current else "none"
    click.echo(f"candidate: version {version} (run {run_id}); champion: {champion_label}")
    if current and current[0] == version:
        click.echo("the candidate already is the champion")
    elif decision.promote:
        tracking.set_champion(version)
        click.echo(f"promoted: {decision.reason}; {tracking.REGISTERED_MODEL}@{tracking.CHAMPION} -> version {version}")
    else:
        click.echo(f"not promoted: {decision.reason}; the champion stays {champion_label}")


@main.command()
@click.option(
    "--model",
    "model_ref",
    default="models:/seq2seq@champion",
    show_default=True,
    help="An export folder (models/export) or an MLflow model URI.",
)
@click.argument("source", type=click.File("r"), default="-")
def predict(model_ref: str, source) -> None:
    """Predict one output per input line (SOURCE: a file, or stdin), tokens separated by spaces.

    Each prediction goes to stdout on its own line (empty for a refused line); problems go to stderr as
    `line N: ...`, and any refused line makes the exit code 1.
    """
    lines = [line.rstrip("\n") for line in source]
    try:
        if Path(model_ref).is_dir():
            from seq2seq.serving import Predictor

            predictor = Predictor(Path(model_ref))
        else:
            from seq2seq import tracking

            predictor = tracking.load_predictor(model_ref)
    except (OSError, LookupError, ValueError) as err:  # InputError among them
        raise click.ClickException(f"cannot load the model {model_ref}: {err}") from None
    failed = 0
    for number, result in enumerate(predictor.predict(lines), start=1):
        click.echo(result.prediction or "")
        if result.error:
            failed += 1
            click.echo(f"line {number}: {result.error}", err=True)
    if failed:
        raise click.ClickException(f"{failed} of {len(lines)} lines could not be predicted")


@main.command()
@click.option("--run-ref-file", default="metrics/mlflow_run.json", show_default=True, help="As in dvc.yaml.")
def link(run_ref_file: str) -> None:
    """Tag MLflow runs with the commit of their DVC experiment (known only once `dvc exp run` has finished)."""
    import subprocess

    from seq2seq import tracking
    from seq2seq.compare import exp_links

    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        raise click.ClickException(f"dvc exp show failed: {shown.stderr.strip()}")
    links = exp_links(json.loads(shown.stdout), run_ref_file)
    click.echo(f"tagged {tracking.link_experiments(links)} runs of {len(links)} experiments")


@main.command()
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag (repeatable).")
@click.option("--sort-by", default="test_exact_match", show_default=True)
@click.option(
    "--ascending/--descending",
    default=None,
    help="Sort order (default: best first: losses and perplexities ascending, other metrics descending).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table", show_default=True)
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write a report.")
@click.option("--metric", default="test_exact_match", show_default=True, help="The report's metric-vs-param plot.")
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
    from seq2seq.compare import KEY_METRICS, curves_png, html_report, render, scatter_png, variant_table
    from seq2seq.files import atomic_write

    bad = [t for t in tags if "=" not in t]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE", param_hint="--tag")
    runs = tracking.search_runs(dict(t.split("=", 1) for t in tags))
    if runs.empty:
        raise click.ClickException(f"no finished runs in {tracking.resolve_tracking_uri()} match")
    try:
        table = variant_table(runs, sort_by, ascending)
    except KeyError as err:
        raise click.BadParameter(str(err.args[0]), param_hint="--sort-by") from None
    click.echo(render(table, fmt))
    if html_path is None:
        return
    params = [c for c in table.columns if c not in ("run", "run_id", *KEY_METRICS)]
    param = param or (params[0] if params else None)
    if param is not None and param not in table:
        raise click.BadParameter(f"{param!r} is not a param that differs: {', '.join(params) or 'none'}")
    histories = tracking.metric_histories(list(table["run_id"]), "val_loss")
    # One curve per run: runs may share a name (a run continuing another keeps it), so label those with their id.
    shared = table["run"].duplicated(keep=False)
    labels = [
        f"{name} ({rid[:8]})" if dup else name
        for name, rid, dup in zip(table["run"], table["run_id"], shared, strict=True)
    ]
    curves = curves_png(dict(zip(labels, (histories[rid] for rid in table["run_id"]), strict=True)), "val_loss")
    scatter = scatter_png(table, metric, param) if param and metric in table else None
    notes = [f"store: {tracking.resolve_tracking_uri()}", f"{len(table)} runs, sorted by {sort_by}"]
    page = html_report(table, curves, scatter, "Seq2Seq variants", notes)
    atomic_write(html_path, lambda tmp: tmp.write_text(page))
    click.echo(f"report: {html_path}", err=True)


def _baseline_metrics(rev: str | None, baseline_file: Path | None, metrics_path: Path) -> tuple[dict | None, str]:
    """The baseline's metrics (None when it has none yet) and a label saying where they came from."""
    import subprocess

    if baseline_file is not None:
        return _metrics_json(baseline_file.read_text(), str(baseline_file)), str(baseline_file)
    # `REV:./path` is relative to the working directory; a bare `REV:/abs/path` would be taken as "not in REV" and
    # the gate would pass with no baseline.
    relative = os.path.relpath(metrics_path.resolve(), Path.cwd().resolve())
    shown = subprocess.run(["git", "show", f"{rev}:./{relative}"], capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        if "does not exist" in shown.stderr or "exists on disk, but not in" in shown.stderr:
            return None, f"{rev} (no {metrics_path} there yet)"
        raise click.ClickException(f"cannot read {metrics_path} at {rev}: {shown.stderr.strip()}")
    return _metrics_json(shown.stdout, f"{metrics_path} at {rev}"), f"{metrics_path} at {rev}"


def _metrics_json(text: str, source: str) -> dict:
    try:
        metrics = json.loads(text)
    except ValueError as err:
        raise click.ClickException(f"{source}: not a metrics file ({err})") from None
    if not isinstance(metrics, dict):
        raise click.ClickException(f"{source}: not a metrics file (a JSON {type(metrics).__name__})")
    return metrics


def _gate_checks(params_path: Path, metrics_path: Path, rev: str, baseline_file: Path | None):
    from seq2seq.gate import check

    cfg = load_params_or_exit(params_path).gate
    if not metrics_path.is_file():
        raise click.ClickException(f"{metrics_path}: no such metrics file; run the pipeline first (dvc repro)")
    current = _metrics_json(metrics_path.read_text(), str(metrics_path))
    baseline, label = _baseline_metrics(rev, baseline_file, metrics_path)
    return check(current, baseline, cfg), label


def _baseline_options(func):
    func = click.option("--baseline", "rev", default="HEAD", show_default=True, help="Git rev of the baseline.")(func)
    return click.option(
        "--baseline-file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="A metrics JSON to compare with instead of a git rev (e.g. a profile's committed baseline).",
    )(func)


@main.command()
@params_option
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@_baseline_options
def gate(params_path: Path, metrics_path: Path, rev: str, baseline_file: Path | None) -> None:
    """Exit 1 when the workspace's metrics fall behind the baseline's beyond the `gate` tolerances, or any
    metric is missing or not finite; print the comparison either way."""
    from seq2seq.gate import table

    checks, label = _gate_checks(params_path, metrics_path, rev, baseline_file)
    click.echo(f"baseline: {label}\n{table(checks)}")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise click.ClickException(f"gate failed: {', '.join(f'{c.metric} {c.note}' for c in failed)}")
    click.echo("gate passed")


@main.command()
@params_option
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--history", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--by-length", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option("--run-ref", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The markdown file.")
@_baseline_options
def report(
    params_path: Path,
    metrics_path: Path,
    history: Path,
    by_length: Path,
    run_ref: Path,
    out: Path,
    rev: str,
    baseline_file: Path | None,
) -> None:
    """Write a markdown retraining report (gate table, metrics and params diffs, PNG curves, the MLflow run)."""
    import subprocess

    import pandas as pd

    from seq2seq.files import atomic_write
    from seq2seq.gate import table
    from seq2seq.plots import exact_match_by_length, loss_curves

    checks, label = _gate_checks(params_path, metrics_path, rev, baseline_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    loss_png, length_png = out.with_name(f"{out.stem}_loss.png"), out.with_name(f"{out.stem}_by_length.png")
    loss_curves(pd.read_csv(history).to_dict("records"), loss_png)
    exact_match_by_length({p.stem: pd.read_csv(p) for p in sorted(by_length.glob("*.csv"))}, length_png)

    def dvc_diff(kind: str) -> str:
        if baseline_file is not None:
            return f"(the baseline is {baseline_file}, not a git rev)"
        shown = subprocess.run(["dvc", kind, "diff", rev, "--md"], capture_output=True, text=True, check=False)
        return shown.stdout.strip() or shown.stderr.strip() or "no changes"

    run_id = json.loads(run_ref.read_text())["run_id"]
    from seq2seq import tracking

    tags = tracking.run_tags_of(run_id)
    experiment = tags.get("dvc_exp_name", "none: dvc repro in the workspace")
    verdict = "passed" if all(c.ok for c in checks) else "**failed**"
    page = f"""# Retraining report

- Gate: {verdict} (baseline: {label})
- MLflow run: `{run_id}` in `{tracking.resolve_tracking_uri()}`
- DVC experiment: {experiment}

## Gate
{table(checks)}

## Metrics diff (`dvc metrics diff {rev}`)
{dvc_diff("metrics")}

## Params diff (`dvc params diff {rev}`)
{dvc_diff("params")}

## Curves
![loss curves]({loss_png.name})

![exact match by source length]({length_png.name})
"""
    atomic_write(out, lambda tmp: tmp.write_text(page))
    click.echo(f"report: {out}")


def _dump(round_trip, data, io) -> str:
    buffer = io.StringIO()
    round_trip.dump(data, buffer)
    return buffer.getvalue()


@main.command("apply-profile")
@params_option
@click.argument("profile", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="One more override (repeatable).")
def apply_profile(params_path: Path, profile: Path | None, overrides: tuple[str, ...]) -> None:
    """Merge a profile (a partial params file) and --set overrides into params.yaml, checked strictly first."""
    import io

    from ruamel.yaml import YAML, YAMLError

    from seq2seq.files import atomic_write, describe
    from seq2seq.params import ParamsError, parse_params, read_yaml

    round_trip = YAML()  # keeps params.yaml's comments and order, as `dvc exp run -S` does
    try:
        merged = round_trip.load(params_path.read_text())
    except (OSError, YAMLError) as err:
        raise BadParams(f"{params_path}: {describe(err)}") from None
    if not isinstance(merged, dict):
        raise BadParams(f"{params_path}: maps sections to keys and values, not a {type(merged).__name__}")
    try:
        changes = read_yaml(profile.read_text()) if profile else {}  # YAML 1.2, as DVC's -S: 1e-3 is a float
    except YAMLError as err:
        raise BadParams(f"{profile}: not YAML ({describe(err)})") from None
    if not isinstance(changes, dict):
        raise BadParams(f"{profile}: a profile maps sections to keys and values, not a {type(changes).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot):
            raise click.BadParameter(f"{item!r} is not SECTION.KEY=VALUE", param_hint="--set")
        if changes.get(section) is None:  # absent, or `train:` with nothing under it in the profile
            changes[section] = {}
        try:
            changes[section][name] = read_yaml(value)
        except YAMLError as err:
            raise click.BadParameter(f"{item!r}: the value is not YAML ({describe(err)})", param_hint="--set") from None
    for section, values in changes.items():
        if section not in merged or not isinstance(merged[section], dict):
            raise BadParams(f"{profile or '--set'}: {section}: not a section of {params_path}")
        if values is None:  # `train:` with nothing under it: nothing to change
            continue
        if not isinstance(values, dict):
            raise BadParams(f"{profile}: {section}: must map keys to values, got {values!r}")
        merged[section].update(values)
    try:
        parse_params(read_yaml(_dump(round_trip, merged, io)))
    except (ParamsError, ValueError) as err:
        raise BadParams(f"{params_path} with {profile or 'the overrides'}: {err}") from None
    atomic_write(params_path, lambda tmp: tmp.write_text(_dump(round_trip, merged, io)))
    click.echo(f"{params_path}: applied {profile or ''} {' '.join(overrides)}".rstrip())
