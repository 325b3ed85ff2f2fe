"""What MLflow logging costs the train stage at the default profile, for two designs, against a null run:

- keeper: the stage logs through a keeper process started first thing (seq2seq/tracking/keeper.py, what the
  stages use): MLflow's import and the store's opening overlap the stage's start-up, each call waits for its
  answer, and the keeper also guards the run's final status;
- in-process: the training process imports MLflow, opens the run and calls MLflow's log_batch once per epoch
  itself (`tracking.open_run` + `tracking.ending`); a watchdog process would guard the run (it only waits);
- off: a null run that logs nothing.

Each variant runs the real train stage's `train()` in a fresh process (real data, a SQLite store that exists
already, as after the first `dvc repro`), alternating. Besides the wall times it prints an accounted cost that
does not depend on the machine's noise: the time the training process spends in tracking calls, plus the CPU the
keeper takes once training has begun.

    python -m benchmarks.logging_overhead                  # params.yaml's default profile, 2 runs of each
    python -m benchmarks.logging_overhead --repeats 3 --epochs 5
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import click

from benchmarks.provenance import stamp
from benchmarks.stage_runs import ROOT, TRAIN_OUTPUTS, default_params, prepare, stage_env

VARIANTS = ("keeper", "in-process", "off")


class NullRun:
    """Logs nothing: the 'off' side."""

    run_id, experiment_id = "0" * 32, "0"

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Timed:
    """Wraps what the stage logs through, adding each call's wall time to `spent[name]`."""

    def __init__(self, inner, spent: dict[str, float]) -> None:
        self._inner, self._spent = inner, spent

    def __getattr__(self, name: str):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._spent[name] += time.perf_counter() - started

        return timed


class Opener:
    """What the stage's `train()` takes as its keeper: `run(stage, ...)` opens the run one of the three ways."""

    def __init__(self, variant: str, spent: dict[str, float]) -> None:
        from seq2seq import tracking

        self.variant, self.spent, self.keeper_cpu_at_open = variant, spent, 0.0
        self.keeper = tracking.Keeper() if variant == "keeper" else None
        # Design (a)'s watchdog: a process that only waits on a pipe (its work starts when the stage dies).
        wait = [sys.executable, "-c", "import sys; sys.stdin.read()"]
        self.watchdog = subprocess.Popen(wait, stdin=subprocess.PIPE) if variant == "in-process" else None

    @contextlib.contextmanager
    def run(self, stage: str, **how):
        from seq2seq import tracking

        started = time.perf_counter()
        if self.variant == "keeper":
            opened = self.keeper.run(stage, **how)
        elif self.variant == "in-process":
            opened = tracking.ending(tracking.open_run(stage, **how))
        else:
            opened = contextlib.nullcontext(NullRun())
        run = opened.__enter__()
        self.spent["open"] += time.perf_counter() - started
        if self.keeper:  # training begins now: what the keeper does from here on may take CPU from it
            self.keeper_cpu_at_open = process_cpu_s(self.keeper.process.pid)
        try:
            yield Timed(run, self.spent)
        except BaseException:
            if not opened.__exit__(*sys.exc_info()):
                raise
        else:
            started = time.perf_counter()
            opened.__exit__(None, None, None)
            self.spent["end"] += time.perf_counter() - started

    def close(self) -> None:
        if self.keeper:
            self.keeper.close()
        if self.watchdog:
            self.watchdog.communicate()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def run_stage(variant: str, params_path: Path, report: Path) -> None:
    """In this process: the train stage's `train()`, logging the `variant` way."""
    spent: dict[str, float] = defaultdict(float)
    opener = Opener(variant, spent)  # first thing, as the stage's main() starts its keeper
    from stages.train import train

    outputs = {flag.removeprefix("--").replace("-", "_") + "_path": Path(path) for flag, path in TRAIN_OUTPUTS.items()}
    train(params_path, Path("data"), opener, **outputs)
    opener.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the keeper, once it has exited
    keeper_after_open = children.ru_utime + children.ru_stime - opener.keeper_cpu_at_open if opener.keeper else 0.0
    report.write_text(json.dumps({"spent": spent, "keeper_cpu_after_open_s": keeper_after_open}))


@click.command()
@click.option("--epochs", type=int, default=None, help="Override train.max_epochs (default: params.yaml's).")
@click.option("--repeats", default=2, show_default=True, help="Runs of each variant, alternating.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/logging_overhead.json"))
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help="Which designs to run (off always).")
@click.option("--child", type=click.Choice(VARIANTS), default=None, hidden=True)
@click.option("--child-params", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--child-report", type=click.Path(path_type=Path), default=None, hidden=True)
def main(epochs, repeats, out, variants, child, child_params, child_report) -> None:
    if child:
        run_stage(child, child_params, child_report)
        return
    params = default_params()
    if epochs is not None:
        params["train"]["max_epochs"] = epochs
    chosen = [v for v in VARIANTS if v in variants.split(",") or v == "off"]
    walls: dict[str, list[float]] = {v: [] for v in chosen}
    reports: dict[str, list[dict]] = {v: [] for v in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params_path = prepare(folder, params)
        env = {**stage_env(folder), "PYTHONPATH": str(ROOT)}
        # The store exists already (its creation and schema migration are a one-off of the first run).
        create = "from seq2seq import tracking; tracking.experiment_id_of()"
        subprocess.run([sys.executable, "-c", create], cwd=folder, env=env, check=True, capture_output=True)
        for _ in range(repeats):
            for variant in chosen:
                report = folder / f"report-{variant}.json"
                command = [sys.executable, "-m", "benchmarks.logging_overhead", "--child", variant,
                           "--child-params", str(params_path), "--child-report", str(report)]  # fmt: skip
                started = time.perf_counter()
                subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
                walls[variant].append(time.perf_counter() - started)
                reports[variant].append(json.loads(report.read_text()))
    off = statistics.median(walls["off"])
    click.echo(f"train stage, default profile ({params['train']['max_epochs']} max epochs), {repeats} runs each, "
               f"alternating; off (null run): median wall {off:.2f} s")  # fmt: skip
    result: dict = {"walls_s": walls, "reports": reports}
    for variant in [v for v in chosen if v != "off"]:
        # Each run paired with the 'off' run of its round, so that slow drifts of the machine cancel.
        diffs = [a - b for a, b in zip(walls[variant], walls["off"], strict=True)]
        mean = statistics.mean(diffs)
        stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        in_stage = statistics.median(sum(r["spent"].values()) for r in reports[variant])
        keeper = statistics.median(r["keeper_cpu_after_open_s"] for r in reports[variant])
        accounted = in_stage + keeper
        click.echo(f"{variant}: wall {statistics.median(walls[variant]):.2f} s, {mean:+.2f} s +- {stderr:.2f} "
                   f"({100 * mean / off:+.2f}% +- {100 * stderr / off:.2f}%) against off")  # fmt: skip
        calls = {name: statistics.median(r["spent"].get(name, 0.0) for r in reports[variant]) for name in
                 reports[variant][0]["spent"]}  # fmt: skip
        click.echo("  in the training process: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in calls.items()))
        click.echo(
            f"  accounted: {in_stage:.2f} s in tracking calls + {keeper:.2f} s keeper CPU after the run "
            f"opened = {accounted:.2f} s = {100 * accounted / off:.2f}% of the stage (target: at most 2%)"
        )
        result[variant] = {"overhead_s": mean, "stderr_s": stderr, "accounted_s": accounted,
                           "accounted_fraction": accounted / off, "calls_s": calls}  # fmt: skip
    result["provenance"] = stamp(shlex.join(["python", "-m", "benchmarks.logging_overhead", *sys.argv[1:]]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
