"""Self-describing checkpoints: weights + model config + vocabulary, written atomically, loaded weights-only."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from seq2seq.data import Vocab
from seq2seq.files import atomic_write
from seq2seq.model import ModelConfig, Seq2Seq

FORMAT_VERSION = 1


def save_checkpoint(
    path: Path, model: Seq2Seq, vocab: Vocab, extra: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Weights (model's, or `state_dict` for the same architecture) + config + vocabulary. `extra` holds plain
    values only (epoch, metrics), so the file loads with weights_only=True."""
    weights = state_dict if state_dict is not None else model.state_dict()
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.cfg),
        "vocab": vocab.tokens,
        # CPU copies: the checkpoint loads on a machine without the device it was trained on.
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
        **extra,
    }
    # Serialise in memory: torch.save names the zip records after the target file, and the temp file's random
    # name would make the same weights give different bytes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Vocab, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone (never from params.yaml); returned in eval mode."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('format_version')!r}, expected {FORMAT_VERSION}")
    vocab = Vocab(payload["vocab"])
    model = Seq2Seq(ModelConfig(**payload["model_config"]), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), vocab, payload


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """The resumable training state (see `train.fit`), written atomically: a kill never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_train_state(path: Path) -> dict[str, Any] | None:
    """The saved training state, or None when there is none."""
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
