"""Atomic file and folder writes: a reader (or a killed stage) never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """An input file is missing, unreadable or not what it should be; the message names the file."""


def describe(err: BaseException) -> str:
    """`Type: first line of the message`, short: the cause to print after the file's name."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _read_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so read it once, at import (a thread creating a
    file while it is briefly 0 would get a world-writable file)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def read_json(path: Path, what: str) -> Any:
    """A JSON file another stage wrote; InputError naming the file if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no {what}") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable {what} ({describe(err)})") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Best effort: some filesystems (FUSE, SMB, some NFS) and folders the user may not read refuse a folder's
    fsync; the file is in place by then, and failing the stage over it would lose more than it protects."""
    with contextlib.suppress(OSError):
        _fsync(path)


def _remove_leftovers(path: Path) -> None:
    """The temp siblings of `path` that a killed writer left (SIGKILL runs no cleanup). Safe: DVC runs one stage of
    a workspace at a time, and only that stage writes its outputs."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call write(tmp_path) on a sibling temp file, then rename it over `path`.

    The file is flushed to disk before the rename and the folder after it: without that, a lost machine (power,
    a killed VM) can leave the new name pointing at a file whose bytes never reached the disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Path(tmp).chmod(0o666 & ~_umask())  # mkstemp makes 0600; the file should look like any the user writes
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n"))


def atomic_dir(path: Path, fill: Callable[[Path], Any]) -> None:
    """Call fill(tmp_dir) on a sibling temp folder, then swap it in for `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like any folder the user makes
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
