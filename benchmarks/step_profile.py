"""Where a training step's time goes: the project's teacher-forced step under torch.profiler, its time per
operator, split into matrix products, the encoder's fused LSTM, and everything else (elementwise work, dropout
masks, copies, the softmax, the loss, clipping, Adam). The GEMM floor (`gemm_floor`) bounds the products (the
encoder's among them); the rest is what a faster step has to shrink. One step = forward + loss + backward + clip +
Adam, as in `throughput`.

    python -m benchmarks.step_profile                  # the seed's sizes
    python -m benchmarks.step_profile --sizes default --steps 20
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import BOS, EOS, PAD, _step, default_sizes, seed_sizes
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.train import adam

# Operators that are matrix products (the oneDNN linear of seq2seq.gemm, aten's mm/addmm/bmm and the like).
GEMM_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")


# The encoder's nn.LSTM runs as oneDNN's fused RNN: its GEMMs and its cell math in one operator, not separable here.
RNN_OPS = ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::_cudnn_rnn", "aten::_cudnn_rnn_backward")


def categorise(name: str) -> str:
    return "gemm" if name in GEMM_OPS else "rnn" if name in RNN_OPS else "other"


def self_times(events) -> dict[str, float]:
    """Self time (s) per operator name: each microsecond once, in the innermost operator that spent it (an op's
    intra-op threads work inside its call, so on the calling thread this is wall time)."""
    return {e.key: e.self_cpu_time_total / 1e6 for e in events if e.self_cpu_time_total > 0}


def measure(sizes: dict, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(sizes["emb_dim"], sizes["hidden_dim"], sizes["num_layers"], sizes["dropout"])
    model = Seq2Seq(cfg, sizes["vocab"], PAD, BOS, EOS).train()
    optimizer = adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(1)
    batch, length = sizes["batch"], sizes["len"]
    src = torch.randint(4, sizes["vocab"], (batch, length), generator=generator)
    body = torch.randint(4, sizes["vocab"], (batch, length), generator=generator)
    tgt = torch.cat([torch.full((batch, 1), BOS), body], 1)
    src_len = torch.full((batch,), length)

    def step() -> None:
        _step(lambda: model(src, src_len, tgt[:, :-1]), list(model.parameters()), optimizer, tgt)

    for _ in range(warmup):
        step()
    started = time.perf_counter()  # the step without the profiler's overhead
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - started) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per_op = {name: seconds / steps for name, seconds in self_times(prof.key_averages()).items()}
    totals = {"gemm": 0.0, "rnn": 0.0, "other": 0.0}
    for name, seconds in per_op.items():
        totals[categorise(name)] += seconds
    others = {name: seconds for name, seconds in per_op.items() if categorise(name) == "other"}
    return {
        "sizes": sizes,
        "steps": steps,
        "per_step_s": totals,
        "wall_per_step_s": wall,
        "top_other": dict(sorted(others.items(), key=lambda item: -item[1])[:15]),
        "per_op_s": per_op,
    }


@click.command()
@click.option("--sizes", "which", type=click.Choice(["seed", "default"]), default="seed", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/step_profile.json"))
def main(which: str, steps: int, warmup: int, params_path: Path, out: Path) -> None:
    sizes = seed_sizes() if which == "seed" else default_sizes(params_path)
    result = measure(sizes, steps, warmup)
    gemm_ms, rnn_ms, other_ms = (result["per_step_s"][k] * 1e3 for k in ("gemm", "rnn", "other"))
    click.echo(
        f"training step profile on {platform.machine()} (torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads), {which} sizes, {steps} steps: CPU time per step, by operator (self time)"
    )
    click.echo(f"  step, unprofiled {result['wall_per_step_s'] * 1e3:8.1f} ms")
    click.echo(f"  matrix products  {gemm_ms:8.1f} ms")
    click.echo(f"  encoder LSTM     {rnn_ms:8.1f} ms   (oneDNN's fused RNN: GEMMs and cell math in one op)")
    click.echo(f"  everything else  {other_ms:8.1f} ms")
    for name, seconds in result["top_other"].items():
        click.echo(f"    {name:<40} {seconds * 1e3:7.1f} ms")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "torch": torch.__version__, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
