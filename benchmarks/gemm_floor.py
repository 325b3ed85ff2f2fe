"""The GEMM floor of one training step on this machine: every matrix product of the project's teacher-forced step
(forward and backward, at its own shape: the per-step recurrent products at the batch's 64 rows, the once-per-batch
ones over all steps), each timed alone with the faster of MKL (`F.linear`) and oneDNN (`seq2seq.gemm`), summed.

Elementwise work, the attention's softmax, dropout, the loss, clipping and Adam all come on top, so a step that
runs its products one after another, each on all the threads, does not reach the printed tokens/s on this CPU
(running independent products side by side, each on fewer cores, could gain a little on it). The reference and the
project are measured in the same run (`throughput.measure`), so the ceiling on the speedup is printed beside them:
that is what a speed target is checked against on a machine like this one.

    python -m benchmarks.gemm_floor                 # the seed's sizes
    python -m benchmarks.gemm_floor --sizes default
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch

from benchmarks.throughput import default_sizes, measure, seed_sizes, train_step_flops
from seq2seq.gemm import gemm


def step_gemms(sizes: dict) -> list[tuple[int, int, int, int]]:
    """(count, N, K, M): `count` products (N x K) @ (K x M) in one training step of the project's model."""
    B, S, T, E, H, V, L = (sizes[k] for k in ("batch", "len", "len", "emb_dim", "hidden_dim", "vocab", "num_layers"))
    G = 4 * H  # the LSTM's four gates
    shapes = []
    for layer in range(L):  # encoder: nn.LSTM, input projection over all steps, then the recurrence
        d = E if layer == 0 else H
        shapes += [(1, B * S, d, G), (S, B, H, G)]  # forward
        shapes += [(S, B, G, H), (1, B * S, G, d), (1, G, B * S, d), (1, G, B * S, H)]  # backward
    shapes += [(T, B, H, H), (T, B, H, H), (1, H, B * T, H)]  # decoder: the query projection, its grads
    for _ in range(L):  # each decoder layer: [input; h] -> gates per step, input grads per step, one weight grad
        shapes += [(T, B, 2 * H, G), (T, B, G, 2 * H), (1, G, B * T, 2 * H)]
    shapes += [(1, B * T, E, G), (1, B * T, G, E), (1, G, B * T, E)]  # layer 0's embedding half, hoisted
    shapes += [(1, B * S, H, H), (1, B * S, H, H), (1, H, B * S, H)]  # the attention keys
    shapes += [(1, B * T, 2 * H, V), (1, B * T, V, 2 * H), (1, V, B * T, 2 * H)]  # the vocabulary projection
    return shapes


def product_seconds(n: int, k: int, m: int, reps: int) -> float:
    """Seconds of one (n x k) @ (k x m), the faster of MKL and oneDNN, best of `reps` after a warm-up."""
    x, w = torch.randn(n, k), torch.randn(m, k)
    best = float("inf")
    for product in (lambda: torch.nn.functional.linear(x, w), lambda: gemm(x, w)):
        product()
        for _ in range(reps):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
    return best


def floor(sizes: dict, reps: int) -> dict:
    shapes = step_gemms(sizes)
    seconds = sum(count * product_seconds(n, k, m, reps) for count, n, k, m in shapes)
    flops = sum(count * 2 * n * k * m for count, n, k, m in shapes)
    tokens = sizes["batch"] * sizes["len"]
    return {"gemm_gflop": flops / 1e9, "gemm_ms": seconds * 1e3, "floor_tokens_per_s": tokens / seconds}


@click.command()
@click.option("--sizes", "which", type=click.Choice(["seed", "default"]), default="seed", show_default=True)
@click.option("--reps", default=10, show_default=True, help="Timings per product; the best counts.")
@click.option("--steps", default=4, show_default=True, help="Measured steps of the reference and the project.")
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/gemm_floor.json"))
def main(which: str, reps: int, steps: int, params_path: Path, out: Path) -> None:
    sizes = seed_sizes() if which == "seed" else default_sizes(params_path)
    measured = measure(sizes, steps, 1, torch.device("cpu"), None)
    result = floor(sizes, reps)
    rates = measured["tokens_per_s"]
    result.update(
        sizes=sizes,
        step_gflop=train_step_flops(sizes) / 1e9,
        tokens_per_s=rates,
        speedup=measured["speedup"],
        max_speedup=result["floor_tokens_per_s"] / rates["reference"],
    )
    click.echo(
        f"{which} sizes on {platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    click.echo(f"GEMMs of one step: {result['gemm_gflop']:.1f} GFLOP in {result['gemm_ms']:.0f} ms at best")
    click.echo(f"{'reference':<12} {rates['reference']:>8.0f} tok/s")
    click.echo(f"{'project':<12} {rates['project']:>8.0f} tok/s  {measured['speedup']:.2f}x")
    click.echo(
        f"{'GEMM floor':<12} {result['floor_tokens_per_s']:>8.0f} tok/s  {result['max_speedup']:.2f}x "
        f"(the step's products alone, one after another)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
