"""Training throughput: the seed's per-step math (benchmarks/reference.py) against the project's model, same
weights, same batches, interleaved in one process so machine noise hits both alike.

One step = forward + loss + backward + clip_grad_norm_ + Adam step, teacher forcing 1 (the seed's math with the
coin always heads), dropout as configured. Prints target tokens/s of each and the ratio; writes JSON.

    python benchmarks/throughput.py                       # seed sizes and the default profile, on the CPU
    python benchmarks/throughput.py --sizes seed --steps 10
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch
import yaml

from benchmarks.reference import ReferenceSeq2Seq
from seq2seq.model import ModelConfig, Seq2Seq, sequence_loss

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


def _step(forward, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, tgt: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = sequence_loss(forward(), tgt[:, 1:], PAD)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def measure(sizes: dict, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(sizes["emb_dim"], sizes["hidden_dim"], sizes["num_layers"], sizes["dropout"])
    ours = Seq2Seq(cfg, sizes["vocab"], PAD, BOS, EOS).to(device).train()
    ref = ReferenceSeq2Seq(sizes["vocab"], cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout)
    ref = ref.to(device).train().load_from(ours)
    ours_opt = torch.optim.Adam(ours.parameters(), lr=1e-3)
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

    times = {"reference": 0.0, "project": 0.0}
    for i, (src, src_len, tgt) in enumerate(batches):
        for name, step in (("reference", ref_step), ("project", ours_step)):  # interleaved, same batch
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
    return {"sizes": sizes, "steps": steps, "tokens_per_s": rates, "speedup": rates["project"] / rates["reference"]}


@click.command()
@click.option("--sizes", "which", type=click.Choice(["seed", "default", "both"]), default="both", show_default=True)
@click.option("--steps", default=8, show_default=True, help="Measured steps per model and size.")
@click.option("--warmup", default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/throughput.json"))
def main(which: str, steps: int, warmup: int, device: str, params_path: Path, out: Path) -> None:
    dev = torch.device(device)
    chosen = {"seed": seed_sizes, "default": lambda: default_sizes(params_path)}
    names = ["seed", "default"] if which == "both" else [which]
    results = {name: measure(chosen[name](), steps, warmup, dev) for name in names}
    click.echo(
        f"training step throughput on {dev} ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {steps} steps each, interleaved"
    )
    click.echo(f"{'sizes':<8} {'reference tok/s':>16} {'project tok/s':>14} {'speedup':>8}")
    for name, r in results.items():
        rates = r["tokens_per_s"]
        click.echo(f"{name:<8} {rates['reference']:>16.0f} {rates['project']:>14.0f} {r['speedup']:>7.2f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(dev), "torch": torch.__version__, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
