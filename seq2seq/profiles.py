"""Applying a profile (a partial params file, profiles/*.yaml) and `SECTION.KEY=VALUE` overrides to params.yaml,
checked strictly before anything is written; the file keeps its comments and key order."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seq2seq.config import ParamsError
from seq2seq.files import atomic_write, describe


class ProfileError(ParamsError):
    """The params file, the profile or the merged result cannot be used; the message names the file and the key."""


class OverrideError(ProfileError):
    """An override is not `SECTION.KEY=VALUE` with a YAML value; the message quotes it."""


def _dump(round_trip: Any, data: Any) -> str:
    buffer = io.StringIO()
    round_trip.dump(data, buffer)
    return buffer.getvalue()


def _changes(profile: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The profile's sections, with the overrides put in them."""
    from ruamel.yaml import YAMLError

    from seq2seq.params import read_yaml

    try:
        changes = read_yaml(profile.read_text()) if profile else {}  # YAML 1.2, as DVC's -S: 1e-3 is a float
    except YAMLError as err:
        raise ProfileError(f"{profile}: not YAML ({describe(err)})") from None
    if not isinstance(changes, dict):
        raise ProfileError(f"{profile}: a profile maps sections to keys and values, not a {type(changes).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot):
            raise OverrideError(f"{item!r} is not SECTION.KEY=VALUE")
        if changes.get(section) is None:  # absent, or `train:` with nothing under it in the profile
            changes[section] = {}
        try:
            changes[section][name] = read_yaml(value)
        except YAMLError as err:
            raise OverrideError(f"{item!r}: the value is not YAML ({describe(err)})") from None
    return changes


def apply(params_path: Path, profile: Path | None = None, overrides: Sequence[str] = ()) -> None:
    """Merge `profile` and then `overrides` into the params file at `params_path`, in place; ProfileError (nothing
    written) if any of them is unusable or the result would not load (seq2seq.params.parse_params)."""
    # ruamel here, not at import: the library imports without it (seq2seq.params.read_yaml says why).
    from ruamel.yaml import YAML, YAMLError

    from seq2seq.params import parse_params, read_yaml

    round_trip = YAML()  # keeps params.yaml's comments and order, as `dvc exp run -S` does
    try:
        merged = round_trip.load(params_path.read_text())
    except OSError as err:  # the path is already the message's first word: the OS's reason alone after it
        raise ProfileError(f"{params_path}: cannot read: {err.strerror}") from None
    except YAMLError as err:
        raise ProfileError(f"{params_path}: {describe(err)}") from None
    if not isinstance(merged, dict):
        raise ProfileError(f"{params_path}: maps sections to keys and values, not a {type(merged).__name__}")
    for section, values in _changes(profile, overrides).items():
        if section not in merged or not isinstance(merged[section], dict):
            raise ProfileError(f"{profile or '--set'}: {section}: not a section of {params_path}")
        if values is None:  # `train:` with nothing under it: nothing to change
            continue
        if not isinstance(values, dict):
            raise ProfileError(f"{profile}: {section}: must map keys to values, got {values!r}")
        merged[section].update(values)
    text = _dump(round_trip, merged)
    try:
        parse_params(read_yaml(text))
    except ValueError as err:  # ConfigError, naming the key
        raise ProfileError(f"{params_path} with {profile or 'the overrides'}: {err}") from None
    atomic_write(params_path, lambda tmp: tmp.write_text(text))
