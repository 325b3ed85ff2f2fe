"""Where a benchmark's figures come from, for its JSON: the command, the machine, the torch version, the commit and
the date. benchmarks/performance_doc.py prints them beside the figures in docs/performance.md.

    result["provenance"] = stamp(shlex.join(["python", "-m", "benchmarks.throughput", *sys.argv[1:]]))
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stamp(command: str) -> dict[str, str]:
    """{"command", "machine", "torch", "commit", "date"} for the run of `command` in this process."""
    return {"command": command, "machine": _machine(), "torch": _torch(), "commit": _commit(), "date": _date()}


def _machine() -> str:
    """Platform, CPU model, cores (and the GPU when torch, already imported by the benchmark, sees one)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    machine = f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"
    torch = sys.modules.get("torch")  # not imported here: a benchmark that never needed torch stays light
    if torch is not None and torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    return machine


def _torch() -> str:
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """HEAD's hash, with "+uncommitted" when tracked files differ from it (the figures may not be HEAD's). A copy of
    the tree whose .git is not its own (the GPU machine's) says its commit in BENCH_COMMIT=$(git rev-parse HEAD)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def _date() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
