"""Greedy decoding throughput (sequences/s): batched against one sequence at a time, same model, same test
sources, interleaved in one process so machine noise hits both alike. Also the exported ONNX graph.

    python benchmarks/decode_throughput.py --checkpoint models/model.pt --data data --export models/export
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch

from seq2seq.checkpoint import load_checkpoint
from seq2seq.data import encode_split, read_split


def _rate(fn, n_sequences: int) -> float:
    start = time.perf_counter()
    fn()
    return n_sequences / (time.perf_counter() - start)


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--export", "export_dir", type=click.Path(path_type=Path, exists=True), default=None)
@click.option("--split", default="test", show_default=True)
@click.option("--n", "n_sequences", default=512, show_default=True, help="Sources to decode per measurement.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/decode_throughput.json"))
def main(checkpoint, data_dir, export_dir, split, n_sequences, batch_size, repeats, out) -> None:
    torch.set_grad_enabled(False)
    model, vocab, _ = load_checkpoint(checkpoint, "cpu")
    frame = read_split(data_dir, split).head(n_sequences)
    data = encode_split(frame, vocab)
    n = len(data)
    extra = 5

    def batched() -> None:
        for start in range(0, n, batch_size):
            src, src_len, _ = data.batch(torch.arange(start, min(start + batch_size, n)))
            model.generate(src, src_len, int(src_len.max()) + extra)

    def one_at_a_time() -> None:
        for i in range(n):
            src, src_len, _ = data.batch(torch.tensor([i]))
            model.generate(src, src_len, int(src_len.max()) + extra)

    methods = {"eager batched": batched, "eager one at a time": one_at_a_time}
    if export_dir is not None:
        from seq2seq.serving import Predictor

        predictor = Predictor(export_dir)
        lines = list(frame["src"])

        def onnx_batched() -> None:
            for start in range(0, n, batch_size):
                predictor.predict(lines[start : start + batch_size])

        methods["onnx batched"] = onnx_batched
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved: each round measures every method once
        for name, fn in methods.items():
            rates[name].append(_rate(fn, n))
    best = {name: max(values) for name, values in rates.items()}
    base = best["eager one at a time"]
    click.echo(f"greedy decoding, {n} {split} sequences, batch {batch_size}, torch threads {torch.get_num_threads()}")
    click.echo(f"{'method':<22} {'seq/s (best)':>13} {'seq/s (all)':>28} {'vs one at a time':>17}")
    for name, value in best.items():
        runs = ", ".join(f"{r:.0f}" for r in rates[name])
        click.echo(f"{name:<22} {value:>13.0f} {runs:>28} {value / base:>16.1f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"sequences": n, "batch_size": batch_size, "machine": platform.machine(), "rates": rates, "best": best}
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
