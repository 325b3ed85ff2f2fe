"""Peak memory of the train stage (the real script, MLflow logging included) at the default profile's sizes and
at the seed's: the peak resident set size of the process, and the device's peak allocation on CUDA. The stage
records both in its timing metrics (metrics/train_timing.json); this runs it in a scratch folder and collects them.

    python -m benchmarks.peak_memory                     # both sizes, on whatever device train.device picks
    python -m benchmarks.peak_memory --epochs 1 --device cpu
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import click
import torch

from benchmarks.stage_runs import default_params, prepare, seed_size_params, stage_env, train_command


@click.command()
@click.option("--epochs", default=2, show_default=True, help="Epochs per run (the peak is reached in the first).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/peak_memory.json"))
def main(epochs: int, device: str, out: Path) -> None:
    profiles = {"default": default_params(), "seed": seed_size_params(epochs)}
    profiles["default"]["train"]["max_epochs"] = epochs
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in profiles.items():
            params["train"]["device"] = device
            folder = Path(tmp) / name
            params_path = prepare(folder, params)
            started = time.perf_counter()
            subprocess.run(
                train_command(params_path), cwd=folder, env=stage_env(folder), check=True, capture_output=True
            )
            timing = json.loads((folder / "metrics/train_timing.json").read_text())
            results[name] = {**timing, "stage_wall_s": time.perf_counter() - started, "epochs": epochs}
    click.echo(f"train stage peak memory ({platform.machine()}, torch {torch.__version__}), {epochs} epoch(s)")
    click.echo(f"{'sizes':<8} {'device':>7} {'peak RSS MiB':>13} {'peak GPU MiB':>13} {'tokens/s':>9} {'wall s':>7}")
    for name, r in results.items():
        gpu = f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-"
        click.echo(
            f"{name:<8} {r['device']:>7} {r['peak_rss_mib']:>13.0f} {gpu:>13} {r['tokens_per_s']:>9.0f} "
            f"{r['stage_wall_s']:>7.1f}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
