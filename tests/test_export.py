"""The exported forms (torch.export program, ONNX through the Predictor) decode what `Seq2Seq.generate` does, on a
2-layer model and padded batches; their loops stay loops, so the graph does not grow with the decoding limits."""

from __future__ import annotations

import torch

from seq2seq.export import ExportConfig, trace, write_export
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.serving import Predictor
from tests.conftest import tiny_model_config


def _model(vocab, train) -> Seq2Seq:
    """A 2-layer model after 40 steps on the tiny task: enough that it ends its answers with <eos> at different
    lengths, so the <pad>-after-<eos> rule is exercised (an untrained one never emits <eos>)."""
    torch.manual_seed(3)
    model = Seq2Seq(tiny_model_config(num_layers=2), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        src, src_len, tgt = train.batch(torch.randint(0, len(train), (32,)))
        loss = sequence_loss(model(src, src_len, tgt[:, :-1]), tgt[:, 1:], vocab.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_exported_program_and_onnx_decode_like_generate(tiny_dataset, tmp_path):
    vocab, splits = tiny_dataset
    model = _model(vocab, splits["train"])
    cfg = ExportConfig(max_src_len=9, max_tgt_len=8)
    write_export(model, vocab, cfg, tmp_path, "card")
    data = splits["test"]
    src, src_len, _ = data.batch(torch.arange(len(data)))  # (B, S<=7) padded, lengths 2..5
    eager, _ = model.generate(src, src_len, max_len=cfg.max_tgt_len)
    expected = [vocab.decode(row) for row in eager.tolist()]
    assert len(set(expected)) > 5  # the model is not decoding one constant answer: the comparison means something

    # The raw ids, <pad> after <eos> included: generate's, padded to the exported graph's fixed length.
    ids = torch.nn.functional.pad(eager, (0, cfg.max_tgt_len - eager.shape[1]), value=vocab.pad_id)
    ends = {row.index(vocab.eos_id) for row in ids.tolist() if vocab.eos_id in row}
    assert len(ends) > 1 and (ids == vocab.pad_id).any()  # answers of several lengths, <pad> after them
    padded = torch.nn.functional.pad(src, (0, cfg.max_src_len - src.shape[1]), value=vocab.pad_id)
    program = torch.export.load(tmp_path / "program.pt2").module()
    assert torch.equal(program(padded, src_len), ids)
    predictor = Predictor(tmp_path)
    (onnx_ids,) = predictor.session.run(None, {"src": padded.numpy(), "src_len": src_len.numpy()})
    assert torch.equal(torch.from_numpy(onnx_ids), ids)
    sources = [vocab.decode(row[:n]) for row, n in zip(src.tolist(), src_len.tolist(), strict=True)]
    assert [p.prediction for p in predictor.predict(sources)] == expected  # through the Predictor's own batching
    axes = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in _onnx_io(tmp_path)]
    assert axes == [["batch", cfg.max_src_len], ["batch"], ["batch", cfg.max_tgt_len]]


def _onnx_io(folder):
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return [*graph.input, *graph.output]


def test_the_exported_graph_does_not_grow_with_the_limits(tiny_dataset):
    vocab, splits = tiny_dataset
    model = _model(vocab, splits["train"])

    def nodes(max_src_len: int, max_tgt_len: int) -> int:
        program = trace(model, vocab, ExportConfig(max_src_len, max_tgt_len))
        return sum(len(module.graph.nodes) for module in program.graph_module.modules())  # scan bodies included

    assert nodes(4, 4) == nodes(16, 24)
