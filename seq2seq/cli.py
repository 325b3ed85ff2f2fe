"""The `seq2seq` console script, and the click glue the stages share (params loading with exit code 2)."""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq.params import Params, ParamsError, load_params


class BadParams(click.ClickException):
    """Printed as `Error: <file>: <key>: <problem>`; exit code 2, like any other usage error."""

    exit_code = 2


def load_params_or_exit(path: Path) -> Params:
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
    from seq2seq.tracking import experiment_id

    click.echo(f"http://127.0.0.1:{port}/#/experiments/{experiment_id()}/runs")
