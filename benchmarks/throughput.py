"""Training throughput: the seed's per-step math (benchmarks/reference.py) against the project's model, same
weights, same batches, interleaved in one process so machine noise hits both alike.

One step = forward + loss + backward + clip_grad_norm_ + Adam step, teacher forcing 1 (the seed's math with the
coin always heads), dropout as configured. Each side steps Adam as its trainer does: the seed's plain
`torch.optim.Adam`, the project's fused kernel (`seq2seq.train.adam`, the same update). Prints target tokens/s of
each and the ratio; writes JSON.
`--compile` adds the project's compiled step (train.compile: torch.compile over static shapes; on CUDA with bf16
autocast and CUDA graphs, the GPU path), and prints the FLOP floor: the step's matmul FLOPs (forward x 3) at
the device's peak, `--peak-tflops`, as tokens/s (no step can beat it), and the share of it each one reaches.

    python -m benchmarks.throughput                       # seed sizes and the default profile, on the CPU
    python -m benchmarks.throughput --sizes seed --steps 10
    python -m benchmarks.throughput --device cuda --compile --steps 50 --warmup 10   # the GPU figures
"""

from __future__ import annotations

import copy
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import click
import torch
import yaml

from benchmarks.provenance import stamp
from benchmarks.reference import ReferenceSeq2Seq
from seq2seq.model import ModelConfig, Seq2Seq, sequence_loss
from seq2seq.train import TrainConfig, adam, training_loss

PAD, BOS, EOS = 0, 1, 2


def seed_sizes() -> dict:
    """The seed document's sizes (vocab 1000, emb 256, hidden 512, 2 layers, dropout 0.5, batch 64, length 20)."""
    return {"vocab": 1000, "emb_dim": 256, "hidden_dim": 512, "num_layers": 2, "dropout": 0.5, "batch": 64, "len": 20}


def default_sizes(params_path: Path) -> dict:
    """The default profile of params.yaml: its vocabulary, model and batch sizes, its longest sequences."""
    params = yaml.safe_load(params_path.read_text())
    data, model = params["data"], params["model"]
    return {
        "vocab": data["num_symbols"] + 4,
        **{k: model[k] for k in ("emb_dim", "hidden_dim", "num_layers", "dropout")},
        "batch": params["train"]["batch_size"],
        "len": data["max_len"],
    }


def train_step_flops(sizes: dict) -> float:
    """Matmul FLOPs of one teacher-forced training step (2 per multiply-add; backward = 2 x forward)."""
    B, S, T, E, H, V, L = (sizes[k] for k in ("batch", "len", "len", "emb_dim", "hidden_dim", "vocab", "num_layers"))
    encoder = sum(2 * B * S * (E if layer == 0 else H) * 4 * H + 2 * B * S * H * 4 * H for layer in range(L))
    keys = 2 * B * S * H * H
    attention = T * (2 * B * H * H + 2 * B * S * H + 2 * B * S * H)  # query projection, v^T tanh(.), context
    cells = T * sum(2 * B * ((E + H) if layer == 0 else H) * 4 * H + 2 * B * H * 4 * H for layer in range(L))
    output = 2 * B * T * 2 * H * V
    return 3.0 * (encoder + keys + attention + cells + output)


def _step(forward, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, tgt: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = sequence_loss(forward(), tgt[:, 1:], PAD)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def measure(sizes: dict, steps: int, warmup: int, device: torch.device, train_cfg: TrainConfig | None) -> dict:
    """`train_cfg`: also time the compiled step (train.compile) under that config (its bf16 applies on CUDA)."""
    torch.manual_seed(0)
    cfg = ModelConfig(sizes["emb_dim"], sizes["hidden_dim"], sizes["num_layers"], sizes["dropout"])
    ours = Seq2Seq(cfg, sizes["vocab"], PAD, BOS, EOS).to(device).train()
    ref = ReferenceSeq2Seq(sizes["vocab"], cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout)
    ref = ref.to(device).train().load_from(ours)
    compiled = copy.deepcopy(ours) if train_cfg else None
    ours_opt = adam(ours.parameters(), 1e-3)  # the trainer's Adam (fused); the reference keeps the seed's
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    batch, length = sizes["batch"], sizes["len"]
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(warmup + steps):
        src = torch.randint(4, sizes["vocab"], (batch, length), generator=generator)
        body = torch.randint(4, sizes["vocab"], (batch, length), generator=generator)
        tgt = torch.cat([torch.full((batch, 1), BOS), body], 1)
        batches.append((src.to(device), torch.full((batch,), length), tgt.to(device)))

    def ours_step(src, src_len, tgt):
        _step(lambda: ours(src, src_len, tgt[:, :-1]), list(ours.parameters()), ours_opt, tgt)

    def ref_step(src, src_len, tgt):
        _step(lambda: ref(src.T, tgt.T).transpose(0, 1), list(ref.parameters()), ref_opt, tgt)

    contenders = {"reference": ref_step, "project": ours_step}
    if compiled is not None:
        compiled_opt = adam(compiled.parameters(), 1e-3)
        compiled_loss = training_loss(compiled, train_cfg, device)

        def compiled_step(src, src_len, tgt):
            compiled_opt.zero_grad(set_to_none=True)
            compiled_loss(src, src_len, tgt, 1.0).backward()
            torch.nn.utils.clip_grad_norm_(compiled.parameters(), 1.0)
            compiled_opt.step()

        # bf16 (params.yaml's train.bf16) applies on CUDA only: the label says which precision this row ran in.
        precision = "bf16" if train_cfg.bf16 and device.type == "cuda" else "fp32"
        contenders[f"compiled {precision}"] = compiled_step
        compiled_step(*batches[0])  # the compilation, outside the clock (the warm-up steps then hit the cache)
    times = dict.fromkeys(contenders, 0.0)
    for i, (src, src_len, tgt) in enumerate(batches):
        for name, step in contenders.items():  # interleaved, same batch
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(src, src_len, tgt)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name] += time.perf_counter() - start
    tokens = steps * batch * length
    rates = {name: tokens / seconds for name, seconds in times.items()}
    speedups = {name: rate / rates["reference"] for name, rate in rates.items() if name != "reference"}
    flops = train_step_flops(sizes)
    return {
        "sizes": sizes,
        "steps": steps,
        "tokens_per_s": rates,
        "speedup": speedups["project"],
        "speedups": speedups,
        "step_gflop": flops / 1e9,
        "achieved_tflops": {name: rate / (batch * length) * flops / 1e12 for name, rate in rates.items()},
    }


@click.command()
@click.option("--sizes", "which", type=click.Choice(["seed", "default", "both"]), default="both", show_default=True)
@click.option("--steps", default=8, show_default=True, help="Measured steps per model and size.")
@click.option("--warmup", default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--compile", "compiled", is_flag=True, help="Also time the compiled step (train.compile).")
@click.option("--peak-tflops", type=float, default=None, help="Device peak [CUDA: 989, H100/H200 dense bf16 spec].")
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/throughput.json"))
def main(
    which: str, steps: int, warmup: int, device: str, compiled: bool, peak_tflops: float, params_path: Path, out: Path
) -> None:
    dev = torch.device(device)
    peak_tflops = peak_tflops or (989.0 if dev.type == "cuda" else None)  # no floor on a CPU of unknown peak
    chosen = {"seed": seed_sizes, "default": lambda: default_sizes(params_path)}
    names = ["seed", "default"] if which == "both" else [which]
    train_cfg = None
    if compiled:  # params.yaml's train section (its bf16 among it), with the compiled step
        train_cfg = TrainConfig(**{**yaml.safe_load(params_path.read_text())["train"], "compile": True})
    results = {name: measure(chosen[name](), steps, warmup, dev, train_cfg) for name in names}
    floor_note = f"; FLOP floor at {peak_tflops:g} TFLOP/s" if peak_tflops else ""
    click.echo(
        f"training step throughput on {dev} ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {steps} steps each, interleaved{floor_note}"
    )
    click.echo(f"{'sizes':<8} {'contender':<14} {'tok/s':>10} {'vs reference':>13} {'TFLOP/s':>8} {'of peak':>8}")
    for name, r in results.items():
        tokens_per_step = r["sizes"]["batch"] * r["sizes"]["len"]
        for contender, rate in r["tokens_per_s"].items():
            ratio = r["speedups"].get(contender, 1.0)
            tflops = r["achieved_tflops"][contender]
            share = f"{tflops / peak_tflops:.2%}" if peak_tflops else "-"
            click.echo(f"{name:<8} {contender:<14} {rate:>10.0f} {ratio:>12.2f}x {tflops:>8.3f} {share:>8}")
        if peak_tflops:
            r["floor_tokens_per_s"] = peak_tflops * 1e12 / (r["step_gflop"] * 1e9) * tokens_per_step
            floor = r["floor_tokens_per_s"]
            click.echo(f"{name:<8} {'FLOP floor':<14} {floor:>10.0f}   ({r['step_gflop']:.2f} GFLOP a step)")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": str(dev), "peak_tflops": peak_tflops, "results": results}
    result["provenance"] = stamp(shlex.join(["python", "-m", "benchmarks.throughput", *sys.argv[1:]]))
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
