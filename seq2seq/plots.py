"""PNG plots for MLflow artifacts and reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot's import
import matplotlib.pyplot as plt


def loss_curves(history: list[dict[str, float]], path: Path) -> None:
    """Train and validation loss per epoch, with validation exact match on a second axis."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
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
    fig.savefig(path)
    plt.close(fig)
