"""Time to quality: training wall time until validation exact match reaches a target (0.99) on the default
task, the project's trainer (`seq2seq.train.fit`) against the seed's per-step math trained the same way.

Both start from the same weights and see the same batches in the same order, with the same Adam update (the project's
fused kernel, the reference's plain one), LR schedule,
gradient clipping and loss (teacher forcing as params.yaml sets it; the reference only knows 1). The clock
counts training steps only, not validation; validation runs after every epoch for both. The reference keeps the
seed's behaviour on padding (no masks, no packing), which is part of what is measured.

    python -m benchmarks.time_to_quality                 # default profile, target 0.99
    python -m benchmarks.time_to_quality --target 0.95 --max-epochs 30
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from pathlib import Path

import click
import torch

from benchmarks.reference import ReferenceSeq2Seq
from seq2seq.data import build_vocab, encode_split, generate_splits
from seq2seq.metrics import exact_matches
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.params import load_params
from seq2seq.train import fit, learning_rate


class Reached(Exception):
    """Raised from the epoch callback to stop training once the target is met."""


def reference_exact_match(model: ReferenceSeq2Seq, data, vocab, batch_size: int) -> float:
    model.eval()
    hits = 0
    for start in range(0, len(data), batch_size):
        src, _, tgt = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        pred = model.greedy(src.T, tgt.shape[1], vocab.bos_id, vocab.eos_id, vocab.pad_id)
        hits += int(exact_matches(pred, tgt[:, 1:], vocab.pad_id).sum())
    return hits / len(data)


def train_reference(model: ReferenceSeq2Seq, train, val, vocab, cfg, target: float, max_epochs: int) -> list[dict]:
    """The seed's training loop with the project's schedule: per batch zero_grad, forward, loss, backward,
    clip, step; the same shuffling generator as `fit`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    history, clock = [], 0.0
    for epoch in range(1, max_epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=shuffle)
        for start in range(0, len(train), cfg.batch_size):
            src, _, tgt = train.batch(order[start : start + cfg.batch_size])
            optimizer.zero_grad(set_to_none=True)
            logits = model(src.T, tgt.T).transpose(0, 1)  # (B, T, V)
            sequence_loss(logits, tgt[:, 1:], vocab.pad_id).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
        clock += time.perf_counter() - started
        history.append(
            {"epoch": epoch, "train_s": clock, "val_exact_match": reference_exact_match(model, val, vocab, 256)}
        )
        click.echo(f"  reference epoch {epoch}: {clock:.1f} s, val exact match {history[-1]['val_exact_match']:.4f}")
        if history[-1]["val_exact_match"] >= target:
            break
    return history


def train_project(model: Seq2Seq, train, val, cfg, max_extra_len: int, target: float) -> list[dict]:
    history, clock = [], 0.0

    def log(epoch: int, row: dict[str, float]) -> None:
        nonlocal clock
        clock += row["epoch_time_s"]
        history.append({"epoch": epoch, "train_s": clock, "val_exact_match": row["val_exact_match"]})
        click.echo(f"  project epoch {epoch}: {clock:.1f} s, val exact match {row['val_exact_match']:.4f}")
        if row["val_exact_match"] >= target:
            raise Reached

    with contextlib.suppress(Reached):
        fit(model, train, val, cfg, torch.device("cpu"), log, max_extra_len=max_extra_len)
    return history


def first_reaching(history: list[dict], target: float) -> dict | None:
    return next((row for row in history if row["val_exact_match"] >= target), None)


@click.command()
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"))
@click.option("--target", default=0.99, show_default=True, help="Validation exact match to reach.")
@click.option("--max-epochs", type=int, default=None, help="Give up after this many epochs (default train.max_epochs).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/time_to_quality.json"))
def main(params_path: Path, target: float, max_epochs: int | None, out: Path) -> None:
    params = load_params(params_path)
    cfg = params.train
    if max_epochs is not None:
        cfg = dataclasses.replace(cfg, max_epochs=max_epochs, patience=max_epochs)
    frames, _ = generate_splits(params.data)
    vocab = build_vocab(params.data)
    train, val = encode_split(frames["train"], vocab), encode_split(frames["val"], vocab)
    torch.manual_seed(cfg.seed)
    project = Seq2Seq(params.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    m = params.model
    reference = ReferenceSeq2Seq(len(vocab), m.emb_dim, m.hidden_dim, m.num_layers, m.dropout).load_from(project)
    click.echo(f"time to val exact match {target} ({params.data.task}, {len(train)} examples, CPU, "
               f"{torch.get_num_threads()} threads, torch {torch.__version__})")  # fmt: skip
    results = {"project": train_project(project, train, val, cfg, params.evaluate.max_extra_len, target)}
    results["reference"] = train_reference(reference, train, val, vocab, cfg, target, cfg.max_epochs)
    click.echo(f"{'trainer':<10} {'epochs':>6} {'train s':>8}")
    reached = {}
    for name, history in results.items():
        row = first_reaching(history, target)
        reached[name] = row
        epochs, seconds = (row["epoch"], f"{row['train_s']:.1f}") if row else (f">{len(history)}", "not reached")
        click.echo(f"{name:<10} {epochs:>6} {seconds:>8}")
    if reached["project"] and reached["reference"]:
        click.echo(f"speedup to quality: {reached['reference']['train_s'] / reached['project']['train_s']:.2f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"target": target, "machine": platform.machine(), "torch": torch.__version__, "reached": reached}
    out.write_text(json.dumps({**summary, "histories": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
