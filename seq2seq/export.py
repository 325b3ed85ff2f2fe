"""Export a trained model as a self-contained folder: greedy decoding as a torch.export program and as ONNX,
plus the vocabulary, the decoding limits and a model card.

Exported graphs need static control flow, so the exported decoder pads every source to `max_src_len`, runs the
encoder as an unrolled, length-masked LSTM (instead of packing, which does not export) and always runs
`max_tgt_len` decoder steps, emitting <pad> after <eos>. Its predictions equal `Seq2Seq.generate`'s.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from seq2seq.config import require
from seq2seq.model import Seq2Seq, masked_lstm
from seq2seq.serving import CARD_FILE, CONFIG_FILE, ONNX_FILE, PROGRAM_FILE
from seq2seq.vocab import VOCAB_FILE, Vocab


@dataclass(frozen=True)
class ExportConfig:
    """The `export` section of params.yaml."""

    max_src_len: int  # longer inputs are refused with a clear error
    max_tgt_len: int  # decoder steps, <eos> included

    def __post_init__(self) -> None:
        require(self.max_src_len >= 1, "max_src_len", f"must be >= 1, got {self.max_src_len}")
        require(self.max_tgt_len >= 1, "max_tgt_len", f"must be >= 1, got {self.max_tgt_len}")


class StaticGreedy(nn.Module):
    """Greedy decoding with static shapes: src (B, max_src_len), src_len (B,) -> tokens (B, max_tgt_len)."""

    def __init__(self, model: Seq2Seq, max_src_len: int, max_tgt_len: int) -> None:
        super().__init__()
        self.model, self.max_src_len, self.max_tgt_len = model, max_src_len, max_tgt_len

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> torch.Tensor:
        model = self.model
        embedded = model.encoder.embedding(src)  # (B, S, E)
        enc_out, h, c = masked_lstm(model.encoder.lstm, embedded, src_len)  # (B, S, H), L x (B, H)
        mask = torch.arange(self.max_src_len, device=src.device).unsqueeze(0) < src_len.unsqueeze(1)  # (B, S)
        keys = model.decoder.attention.key_proj(enc_out)  # (B, S, H)
        token = torch.full_like(src_len, model.bos_id)  # (B,)
        finished = torch.zeros_like(src_len, dtype=torch.bool)
        tokens = []
        for _ in range(self.max_tgt_len):
            out, context, h, c, _ = model.decoder.step(model.decoder.embedding(token), h, c, keys, enc_out, mask)
            token = model.decoder.project(out, context).argmax(-1)  # (B,)
            token = torch.where(finished, torch.full_like(token, model.pad_id), token)
            tokens.append(token)
            finished = finished | (token == model.eos_id)
        return torch.stack(tokens, dim=1)  # (B, T)


def example_inputs(vocab: Vocab, cfg: ExportConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs to trace with: batch > 1, or the exporters would specialise the batch dimension to 1."""
    src = torch.full((batch, cfg.max_src_len), vocab.pad_id, dtype=torch.long)
    src[:, :1] = len(vocab) - 1
    return src, torch.ones(batch, dtype=torch.long)


@contextlib.contextmanager
def _quiet_exporters():
    """torch's exporters warn about their own internals (pytree deprecations, optional torchvision ops);
    none of it is actionable for a user of this project."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _wrap(model: Seq2Seq, cfg: ExportConfig) -> tuple[StaticGreedy, tuple[dict, dict]]:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return StaticGreedy(model.cpu().eval(), cfg.max_src_len, cfg.max_tgt_len).eval(), ({0: batch}, {0: batch})


def trace(model: Seq2Seq, vocab: Vocab, cfg: ExportConfig) -> torch.export.ExportedProgram:
    """Greedy decoding traced once by torch.export, with a dynamic batch dimension."""
    wrapper, dynamic = _wrap(model, cfg)
    with _quiet_exporters():
        return torch.export.export(wrapper, example_inputs(vocab, cfg), dynamic_shapes=dynamic)


def export_onnx(program: torch.export.ExportedProgram, vocab: Vocab, cfg: ExportConfig, path: Path) -> None:
    """ONNX translated from the program `trace` made (its dynamic batch kept): the two files hold one graph, and
    the exporter does not trace the model a second time (a third of its time)."""
    with _quiet_exporters(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        onnx_program = torch.onnx.export(
            program,
            example_inputs(vocab, cfg),
            dynamo=True,
            input_names=["src", "src_len"],
            output_names=["tokens"],
            verbose=False,
        )
        onnx_program.save(str(path))


def write_export(model: Seq2Seq, vocab: Vocab, cfg: ExportConfig, out_dir: Path, card: str) -> None:
    """Fill `out_dir` with everything needed to serve the model without this repo (or torch, for ONNX)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    program = trace(model, vocab, cfg)
    with _quiet_exporters():
        torch.export.save(program, out_dir / PROGRAM_FILE)
    export_onnx(program, vocab, cfg, out_dir / ONNX_FILE)
    vocab.save(out_dir / VOCAB_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    (out_dir / CARD_FILE).write_text(card)


def model_card(params_flat: dict, train_metrics: dict, eval_metrics: dict, cfg: ExportConfig) -> str:
    """A markdown model card: task, params, metrics, and how to load the export."""

    def table(rows: dict) -> str:
        return "\n".join(["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())])

    metrics = {**{f"train/{k}": v for k, v in train_metrics.items()}, **eval_metrics}
    return f"""# Seq2Seq LSTM with additive attention: {params_flat.get("data.task", "?")} task

Encoder-decoder LSTM with Bahdanau attention, trained on the synthetic `{params_flat.get("data.task", "?")}` task.
Input: source tokens separated by spaces (at most {cfg.max_src_len}); output: the greedy decoding (at most
{cfg.max_tgt_len} tokens, `<eos>` included).

## Files
- `{PROGRAM_FILE}`: greedy decoding as a `torch.export` program, inputs `src` (B, {cfg.max_src_len}) int64 padded
  with id 0 and `src_len` (B,) int64; output token ids (B, {cfg.max_tgt_len}), `<pad>` after `<eos>`.
- `{ONNX_FILE}`: the same graph in ONNX, for onnxruntime.
- `{VOCAB_FILE}`: the vocabulary (ids 0-3: `<pad>`, `<bos>`, `<eos>`, `<unk>`); `{CONFIG_FILE}`: the limits.

## How to load
```python
from seq2seq.serving import Predictor
Predictor("path/to/export").predict(["3 1 4 1 5"])    # onnxruntime, no torch needed
import torch; program = torch.export.load("path/to/export/{PROGRAM_FILE}").module()
```

## Metrics
{table(metrics)}

## Params
{table(params_flat)}
"""
