"""Export a trained model as a self-contained folder: greedy decoding as a torch.export program and as ONNX,
plus the vocabulary, the decoding limits and a model card.

Exported graphs need static control flow, so the exported decoder pads every source to `max_src_len`, runs the
encoder as a length-masked LSTM (instead of packing, which does not export) and always runs `max_tgt_len` decoder
steps, emitting <pad> after <eos>. Its decoder step is `Seq2Seq.greedy_step`, the one `generate` runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch._higher_order_ops.scan import scan  # a prototype API, torch.export's loop; torch is pinned

from seq2seq.config import require
from seq2seq.fast import lstm_cell
from seq2seq.files import InputError, read_json
from seq2seq.model import Seq2Seq
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
    """Greedy decoding with static shapes: src (B, max_src_len), src_len (B,) -> tokens (B, max_tgt_len).

    Both loops are `scan`s (torch's higher-order op, which torch.export keeps and the ONNX exporter turns into an
    ONNX Scan), so the graph holds one encoder step and one decoder step whatever the limits. Unrolled at the
    default limits (40 and 41 steps), the two exporters took 62 s over it; as loops, 8.5 s (a 2-core CPU), and the
    ONNX file is half the size, with the same serving speed.
    """

    def __init__(self, model: Seq2Seq, max_src_len: int, max_tgt_len: int) -> None:
        super().__init__()
        self.model, self.max_src_len, self.max_tgt_len = model, max_src_len, max_tgt_len

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> torch.Tensor:
        model = self.model
        encoded = _scan_lstm(model.encoder.lstm, model.encoder.embedding(src), src_len)  # (B, S, H), (L, B, H) x 2
        first = model.first_state(*encoded, src_len)

        def step(carry, _):
            token, finished, h, c = carry  # (B,), (B,), (L, B, H), (L, B, H)
            state = first._replace(h=list(h.unbind(0)), c=list(c.unbind(0)))
            token, finished, state, _ = model.greedy_step(token, finished, state)  # the step `generate` runs
            return (token, finished, torch.stack(state.h), torch.stack(state.c)), token.clone()  # outputs may not alias

        start = (torch.full_like(src_len, model.bos_id), torch.zeros_like(src_len, dtype=torch.bool), *encoded[1:])
        steps = src.new_zeros(self.max_tgt_len, 1)  # (T, 1): scan needs a sequence to run over; its values unused
        _, tokens = scan(step, start, steps)  # (T, B)
        return tokens.transpose(0, 1)  # (B, T)


def _scan_lstm(lstm: nn.LSTM, x: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`fast.masked_lstm` in eval mode with each layer's time loop as a `scan`: the top layer's outputs (B, S, H) and
    the final h and c (L, B, H), those of a packed call."""
    valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(1) < src_len.unsqueeze(0)).unsqueeze(-1)  # (S, B, 1)
    final_h, final_c = [], []
    for layer in range(lstm.num_layers):
        w_hh = getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        gates_x = (x @ getattr(lstm, f"weight_ih_l{layer}").T + bias).transpose(0, 1)  # (S, B, 4H), all steps at once

        def step(carry, inputs, w_hh=w_hh):
            h, c = carry  # (B, H) each
            gates, valid_t = inputs  # (B, 4H), (B, 1)
            h_next, c_next = lstm_cell(gates + h @ w_hh.T, c)  # (B, H) each
            # past its length a sequence keeps its final state; its outputs there are masked out of the attention
            return (torch.where(valid_t, h_next, h), torch.where(valid_t, c_next, c)), h_next.clone()

        start = (x.new_zeros(x.shape[0], lstm.hidden_size), x.new_zeros(x.shape[0], lstm.hidden_size))  # (B, H) x 2
        (h, c), outputs = scan(step, start, (gates_x, valid))  # (B, H) x 2, (S, B, H)
        x = outputs.transpose(0, 1)  # (B, S, H)
        final_h.append(h)
        final_c.append(c)
    return x, torch.stack(final_h), torch.stack(final_c)


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
    # A copy without grad: export traces a scan over weights that require grad with its backward, and fails on it.
    frozen = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    return StaticGreedy(frozen, cfg.max_src_len, cfg.max_tgt_len).eval(), ({0: batch}, {0: batch})


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
        _name_batch_axis(onnx_program.model.graph)
        onnx_program.save(str(path))


def _name_batch_axis(graph) -> None:
    """Call the inputs' and output's first axis "batch": from a program the exporter keeps torch's symbol (s28)."""
    import onnx_ir as ir  # the ONNX exporter's own IR (a dependency of onnxscript)

    symbol = graph.inputs[0].shape[0]
    for value in [*graph.inputs, *graph.outputs]:
        value.shape = ir.Shape([ir.SymbolicDim("batch") if dim == symbol else dim for dim in value.shape])


def write_export(
    model: Seq2Seq,
    vocab: Vocab,
    cfg: ExportConfig,
    out_dir: Path,
    card: str,
    trained_src_len: list | None = None,
    tokens: tuple[str, str] = ("spaces", "spaces"),
) -> None:
    """Fill `out_dir` with everything needed to serve the model without this repo (or torch, for ONNX); the
    checkpoint's `trained_src_len` (the training sources' [shortest, longest]) lets serving warn outside it;
    `tokens`: how serving reads a line as source tokens and writes target tokens (`data.token_modes`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    program = trace(model, vocab, cfg)
    with _quiet_exporters():
        torch.export.save(program, out_dir / PROGRAM_FILE)
    export_onnx(program, vocab, cfg, out_dir / ONNX_FILE)
    vocab.save(out_dir / VOCAB_FILE)
    modes = {"source_tokens": tokens[0], "target_tokens": tokens[1]}
    config = asdict(cfg) | {"trained_src_len": trained_src_len} | modes
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / CARD_FILE).write_text(card)


def read_metrics(train_metrics: Path, eval_metrics: Path) -> tuple[dict, dict]:
    """What the model card shows: the train stage's metrics (metric -> value) and the evaluate stage's, flattened
    to split/metric -> value (MLflow's names); InputError naming a file that is not what it should be."""
    evaluation = read_json(eval_metrics, "metrics file")
    if not isinstance(evaluation, dict) or not all(isinstance(v, dict) for v in evaluation.values()):
        raise InputError(f"{eval_metrics}: not the evaluate stage's metrics (split -> metric -> value)")
    training = read_json(train_metrics, "metrics file")
    if not isinstance(training, dict):
        raise InputError(f"{train_metrics}: not the train stage's metrics (metric -> value)")
    return training, {f"{split}/{k}": v for split, values in evaluation.items() for k, v in values.items()}


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
