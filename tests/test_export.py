"""The exported forms (torch.export program, ONNX through the Predictor) decode what `Seq2Seq.generate` does, on a
2-layer model and padded batches; their loops stay loops, so the graph does not grow with the decoding limits."""

from __future__ import annotations

import torch

from seq2seq.export import ExportConfig, trace, write_export
from seq2seq.model import Seq2Seq
from seq2seq.serving import Predictor
from tests.conftest import tiny_model_config


def _model(vocab) -> Seq2Seq:
    torch.manual_seed(3)
    return Seq2Seq(tiny_model_config(num_layers=2), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).eval()


def test_exported_program_and_onnx_decode_like_generate(tiny_dataset, tmp_path):
    vocab, splits = tiny_dataset
    model = _model(vocab)
    cfg = ExportConfig(max_src_len=9, max_tgt_len=8)
    write_export(model, vocab, cfg, tmp_path, "card")
    data = splits["test"]
    src, src_len, _ = data.batch(torch.arange(len(data)))  # (B, S<=7) padded, lengths 2..5
    eager, _ = model.generate(src, src_len, max_len=cfg.max_tgt_len)
    expected = [vocab.decode(row) for row in eager.tolist()]
    assert len(set(expected)) > 5  # the model is not decoding one constant answer: the comparison means something

    padded = torch.nn.functional.pad(src, (0, cfg.max_src_len - src.shape[1]), value=vocab.pad_id)
    program = torch.export.load(tmp_path / "program.pt2").module()
    assert [vocab.decode(row) for row in program(padded, src_len).tolist()] == expected
    sources = [vocab.decode(row[:n]) for row, n in zip(src.tolist(), src_len.tolist(), strict=True)]
    assert [p.prediction for p in Predictor(tmp_path).predict(sources)] == expected  # ONNX, another batch size


def test_the_exported_graph_does_not_grow_with_the_limits(tiny_dataset):
    vocab, _ = tiny_dataset
    model = _model(vocab)

    def nodes(max_src_len: int, max_tgt_len: int) -> int:
        program = trace(model, vocab, ExportConfig(max_src_len, max_tgt_len))
        return sum(len(module.graph.nodes) for module in program.graph_module.modules())  # scan bodies included

    assert nodes(4, 4) == nodes(16, 24)
