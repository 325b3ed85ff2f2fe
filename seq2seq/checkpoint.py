"""Self-describing checkpoints: weights + model config + vocabulary, written atomically, loaded weights-only."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from seq2seq.data import Vocab
from seq2seq.files import InputError, atomic_write, describe, write_json
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.train_state import FitResult

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


def _load(path: Path, what: str) -> dict[str, Any]:
    """torch.load(weights_only=True) onto the CPU, with an InputError naming the file for anything it cannot read
    (onto the CPU: a device's own errors, out of memory among them, are not the file's fault)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no {what}; run the train stage first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not torch's message: it suggests weights_only=False, which would run whatever code the file holds.
        raise InputError(f"{path}: not a {what} (not a torch file of tensors and plain values)") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # truncated, not a zip, not a torch file
        raise InputError(f"{path}: not a readable {what} ({describe(err)})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: not a {what} (it holds a {type(payload).__name__})")
    return payload


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Vocab, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone (never from params.yaml); returned in eval mode."""
    payload = _load(path, "checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {payload.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:  # the payload's entries: missing, of the wrong type, or values a config refuses
        vocab = Vocab(payload["vocab"])
        cfg = ModelConfig(**payload["model_config"])
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a usable checkpoint ({describe(err)})") from None
    model = Seq2Seq(cfg, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:  # weights missing, unexpected or of another shape
        raise InputError(f"{path}: its weights do not fit its model config ({describe(err)})") from None
    return model.to(device).eval(), vocab, payload


def save_train_state(path: Path, state: dict[str, Any], **checks: Any) -> None:
    """The resumable training state (see `train.fit`) with what a rerun checks before resuming it (`checks`: the
    fingerprint, the run id), written atomically: a kill never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state | checks, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_train_state(path: Path) -> dict[str, Any] | None:
    """The saved training state, or None when there is none; InputError naming the file if it is unreadable."""
    if not Path(path).is_file():
        return None
    return _load(path, "training state")


def code_files(stage: Path) -> list[Path]:
    """The code a training state is made by: the stage's file and the library."""
    return [stage, *sorted(Path(__file__).parent.glob("**/*.py"))]


def fingerprint(flat_params: dict[str, Any], data_digest: str, code: list[Path], threads: int) -> str:
    """What a saved training state must match to be resumed: the training's params, the exact data, the code (a
    state from other code may not load, or would finish a run that other code began) and the CPU thread count
    (another sums in another order: the resumed run would not end as an uninterrupted one)."""
    digest = hashlib.sha256(json.dumps([flat_params, data_digest, threads], sort_keys=True).encode())
    for path in code:
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def resumable(path: Path, expected: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the saved state if it belongs to an unfinished run of this fingerprint, else None; a note for the user on
    what happens to a state that exists). The state only saves time: an unreadable one is set aside, not an error."""
    try:
        state = load_train_state(path)
    except InputError as err:  # e.g. a disk that lost the last write
        return None, f"warning: ignoring the saved training state: {err}; training starts from epoch 1"
    if state is None or state.get("complete"):
        return None, None
    if state.get("fingerprint") != expected:
        # Said aloud: after a kill, an edit to the code or the params silently costing the epochs done would puzzle.
        note = "is from a run with other params, data, code or thread count; training starts from epoch 1"
        return None, f"note: {path} {note} in a new MLflow run"
    return state, f"resuming after epoch {state['epoch']} (MLflow run {state.get('run_id')})"


def save_training(
    result: FitResult, model: Seq2Seq, vocab: Vocab, paths: dict[str, Path], timing: dict, src_len: torch.Tensor
) -> None:
    """The train stage's outputs once training is done: the best weights as a checkpoint (with the range of the
    training sources' lengths `src_len`, outside which serving warns), the metrics file (the best epoch's), the
    timing (with `timing`'s extra keys) and the per-epoch history, without the timing, so that the metrics and the
    history stay byte-identical run to run."""
    import pandas as pd

    trained = [int(src_len.min()), int(src_len.max())]
    extra = {"epoch": result.best_epoch, "metrics": result.best_metrics(), "trained_src_len": trained}
    save_checkpoint(paths["checkpoint_path"], model, vocab, extra, state_dict=result.best_state)
    write_json(paths["metrics_path"], result.summary())
    write_json(paths["timing_path"], result.timing() | timing)
    history = pd.DataFrame(result.history_rows())
    atomic_write(paths["history_path"], lambda tmp: history.to_csv(tmp, index=False, float_format="%.6g"))
