"""Where `make test`'s CPU time goes: the suite run as make test runs it, with every Python process it starts
(stages, keepers, dvc, mlflow servers, seq2seq commands, the pytest workers) logging its own CPU time as it exits,
summed by what the process was. For work on the suite's time: it is CPU-bound on 2 cores, spread over a couple
of hundred short processes, each paying torch's and often MLflow's import.

    python -m benchmarks.suite_profile [-- PYTEST ARGS]     (default: -n auto --dist loadfile)

Python has no hook for this, so a sitecustomize.py on PYTHONPATH (written to a temp folder) logs at exit, and
before os._exit (the keeper exits that way), with its whole command line (sys.orig_argv: `python -c CODE` too). A
process killed by a signal (a server the tests stop) logs nothing; one that nobody waits for (DVC's queue workers,
a killed stage's keeper) logs but is missing from RUSAGE_CHILDREN, the CPU of every process the suite waited for.
Both sums are printed: neither is the whole.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.provenance import stamp

ROOT = Path(__file__).resolve().parents[1]
SITECUSTOMIZE = """
import atexit, os, resource, sys, time
_start, _real_exit = time.time(), os._exit
def _log():
    if not os.environ.get("SUITE_PROFILE_LOG"):  # a process started with an environment of its own
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.path.join(os.environ["SUITE_PROFILE_LOG"], f"{os.getpid()}.tsv"), "w") as out:
        cpu, wall = used.ru_utime + used.ru_stime, time.time() - _start
        out.write(f"{cpu:.3f}\\t{wall:.3f}\\t{' '.join(sys.orig_argv)[:300]}\\n")
def _exit(code):
    _log()
    _real_exit(code)
atexit.register(_log)
os._exit = _exit
"""
# What a process was, from its command line: first match wins.
KINDS = [
    (r"-m stages\.(\w+)", "stage {}"),
    (r"keeper import serve", "keeper (MLflow logging)"),
    (r"huey", "mlflow server job runner"),
    (r"uvicorn|gunicorn", "mlflow server worker"),
    (r"/mlflow (server|ui|models)", "mlflow {}"),
    (r"/dvc (exp|queue) ([\w-]+)", "dvc {} {}"),
    (r"/dvc ([\w-]+)", "dvc {}"),
    (r"/seq2seq ([\w-]+)", "seq2seq {}"),
    (r"torchrun|torch\.distributed", "torchrun"),
    (r"-m pytest|exec\(eval\(sys\.stdin", "pytest (in-process tests)"),  # its xdist workers: execnet's -c
]


def kind(command: str) -> str:
    for pattern, label in KINDS:
        found = re.search(pattern, command)
        if found:
            return label.format(*found.groups())
    return "other"


def summarise(log_dir: Path) -> list[dict]:
    """A row per kind of process ({"process", "runs", "cpu_s", "cpu_each_s"}) over every process that logged, the
    most CPU first."""
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for path in log_dir.glob("*.tsv"):
        cpu, _, command = path.read_text().rstrip("\n").split("\t", 2)
        by_kind[kind(command)].append(float(cpu))
    rows = [{"process": k, "runs": len(v), "cpu_s": sum(v), "cpu_each_s": sum(v) / len(v)} for k, v in by_kind.items()]
    return sorted(rows, key=lambda row: -row["cpu_s"])


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results" / "suite_profile.json")
def main(pytest_args: tuple[str, ...], out: Path) -> None:
    args = list(pytest_args) or ["-n", "auto", "--dist", "loadfile"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        log_dir = Path(tmp) / "log"
        log_dir.mkdir()
        path = os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, "SUITE_PROFILE_LOG": str(log_dir)}
        started = time.monotonic()
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env
        )
        wall = time.monotonic() - started
        rows = summarise(log_dir)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    total, logged = used.ru_utime + used.ru_stime, sum(row["cpu_s"] for row in rows)
    busy = f"{total / wall:.2f} cores busy"
    click.echo(
        f"suite: {wall:.1f} s wall, {total:.1f} s CPU in the processes waited for ({busy}), exit {tests.returncode}"
    )
    click.echo(f"CPU logged by the processes themselves: {logged:.1f} s")
    click.echo(f"{'process':<34} {'runs':>5} {'CPU s':>8} {'each':>6}")
    for row in rows:
        click.echo(f"{row['process']:<34} {row['runs']:>5} {row['cpu_s']:>8.1f} {row['cpu_each_s']:>6.2f}")
    result = {
        "wall_s": wall,
        "cpu_s": total,
        "cpu_logged_s": logged,
        "pytest_exit": tests.returncode,
        "by_process": rows,
    }
    result["provenance"] = stamp(shlex.join(["python", "-m", "benchmarks.suite_profile", *sys.argv[1:]]))
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
