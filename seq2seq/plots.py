"""Figures for MLflow artifacts (`log_figure`) and reports (`savefig`): plain matplotlib Figures, outside
pyplot's global state, so nothing needs closing and no display is ever needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from seq2seq.files import InputError, describe

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_exact_match")  # what the training curves draw


def read_history(path: Path) -> list[dict]:
    """The train stage's per-epoch history (plots/train_history.csv), for `loss_curves`."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:  # missing, empty, not CSV
        raise InputError(f"{path}: not a readable training history ({describe(err)})") from None
    missing = sorted(set(HISTORY_COLUMNS) - set(frame.columns))
    if missing or frame.empty:
        raise InputError(f"{path}: not a training history (no {', '.join(missing) or 'rows'})")
    return frame.to_dict("records")


def loss_curves(history: list[dict[str, float]]) -> Figure:
    """Train and validation loss per epoch, with validation exact match on a second axis."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    ax.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token")
    ax.set_yscale("log")
    acc = ax.twinx()
    acc.plot(epochs, [row["val_exact_match"] for row in history], color="tab:green", ls="--", label="val exact match")
    acc.set_ylim(0, 1.02)
    acc.set_ylabel("exact match")
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title("Training curves")
    fig.tight_layout()
    return fig


def attention_heatmap(source: list[str], predicted: list[str], weights) -> Figure:
    """Attention weights (T, S) of one decoded example: rows are output tokens, columns source tokens."""
    fig = Figure(figsize=(0.4 * len(source) + 2, 0.4 * len(predicted) + 1.5), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source)
    ax.set_yticks(range(len(predicted)), predicted)
    ax.set_xlabel("source")
    ax.set_ylabel("prediction")
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def exact_match_by_length(tables: dict[str, pd.DataFrame]) -> Figure:
    """Exact match against source length, one line per split (tables: split -> DataFrame length, exact_match)."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for split, table in tables.items():
        ax.plot(table["length"], table["exact_match"], marker="o", label=split)
    ax.set_xlabel("source length")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("Exact match by source length")
    fig.tight_layout()
    return fig
