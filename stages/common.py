"""What the stages share: path options (dvc.yaml passes every path), and errors as one line: bad params exit 2
(a usage error), a bad input file or an unusable MLflow store exit 1."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import click

from seq2seq.config import ConfigError, ParamsError, StageError, TrackingError
from seq2seq.files import InputError


class BadParams(click.ClickException):
    """Printed as `Error: <file>: <key>: <problem>`; exit code 2, like any other usage error."""

    exit_code = 2


def stage(func):
    """`func` as a click command whose library errors end the stage with one line instead of a traceback."""

    @functools.wraps(func)
    def run(**kwargs):
        try:
            return func(**kwargs)
        except ParamsError as err:
            raise BadParams(str(err)) from None
        # ConfigError: params that do not fit the data; StageError: training diverged, out of memory
        except (InputError, TrackingError, ConfigError, StageError) as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:  # writing an output: a full disk, an unwritable folder (the inputs are InputError)
            raise click.ClickException(f"{err.filename}: {err.strerror}" if err.filename else str(err)) from None

    return click.command()(run)


def params_option(func):
    kind = click.Path(path_type=Path, dir_okay=False)
    return click.option("--params", "params_path", type=kind, required=True, help="params.yaml to read.")(func)


def input_path(flag: str, dest: str, directory: bool = False):
    """A required option naming an existing file (or folder) that a stage reads."""
    kind = click.Path(path_type=Path, exists=True, file_okay=not directory, dir_okay=directory)
    return click.option(flag, dest, type=kind, required=True)


def output_path(flag: str, dest: str, directory: bool = False):
    """A required option naming a file (or folder) that a stage writes."""
    kind = click.Path(path_type=Path, file_okay=not directory, dir_okay=directory)
    return click.option(flag, dest, type=kind, required=True)


def sectioned(metrics: Mapping[str, float], section: str = "train") -> dict[str, float]:
    """MLflow names, which its chart view groups by the part before `/`: `val_loss` -> `val/loss`, and a name of
    no section of its own into `section` (`lr` -> `train/lr`)."""
    split = {key: key.partition("_") for key in metrics}
    return {f"{p}/{r}" if p in ("train", "val") else f"{section}/{k}": metrics[k] for k, (p, _, r) in split.items()}


def command_line(module: str) -> list[str]:
    """The current command's options as a command line running `module` again (e.g. under torchrun)."""
    ctx = click.get_current_context()
    argv = ["-m", module]
    for param in ctx.command.params:
        if isinstance(param, click.Option) and ctx.params.get(param.name) is not None:
            argv += [param.opts[0], str(ctx.params[param.name])]
    return argv
