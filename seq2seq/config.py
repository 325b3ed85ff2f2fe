"""Strict loading of config dataclasses from plain mappings (one params.yaml section each).

Every config in the package is a frozen dataclass whose fields carry the types; this module turns a mapping into
one, failing loudly on an unknown key, a missing key or a wrong type, and names the dotted key it failed on.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, mistyped or out of range; `key` is the dotted params key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class StageError(RuntimeError):
    """A stage cannot go on (training diverged, out of memory); the message says what to change."""


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")  # the user:password@ of a URI


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it (`http://user:TOKEN@host`) replaced by `***@`."""
    return _CREDENTIALS.sub("***@", text)


class TrackingError(RuntimeError):
    """MLflow could not log (a store it cannot open, a failed call); the message names the cause, never a
    credential of the store's URI. Here, not in the tracking package: the stages catch it without importing that."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ParamsError(ValueError):
    """params.yaml cannot be used; the message names the file and the dotted key."""


def require(condition: bool, key: str, problem: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds (used by the configs' range checks)."""
    if not condition:
        raise ConfigError(key, problem)


def _check_type(value: Any, expected: Any, key: str) -> Any:
    if typing.get_origin(expected) is Literal:
        choices = typing.get_args(expected)
        require(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    # bool is a subclass of int in Python; a YAML `true` must not pass as a number.
    if expected is float:
        require(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}"
        )
        require(math.isfinite(value), key, f"must be a finite number, got {value!r}")  # .inf fails an epoch later
        return float(value)
    if expected is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if expected is bool:
        require(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if expected is str:
        require(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {expected!r} for {key}")  # a bug in a config class


def from_mapping(cls: type[T], mapping: Any, section: str) -> T:
    """Build the dataclass `cls` from `mapping`, the params.yaml section named `section`."""
    require(isinstance(mapping, Mapping), section, f"must be a mapping of keys to values, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    require(not unknown, f"{section}.{unknown[0]}" if unknown else section, f"unknown key (known: {', '.join(names)})")
    missing = [n for n in names if n not in mapping]
    require(not missing, f"{section}.{missing[0]}" if missing else section, "missing key")
    values = {n: _check_type(mapping[n], hints[n], f"{section}.{n}") for n in names}
    try:
        return cls(**values)
    except ConfigError as err:  # __post_init__ range checks name the field only; add the section
        raise ConfigError(f"{section}.{err.key}", err.problem) from None
