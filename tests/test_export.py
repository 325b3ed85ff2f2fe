"""The exported forms (torch.export program, ONNX through the Predictor) decode what `Seq2Seq.generate` does, on a
2-layer model and padded batches; their loops stay loops, so the graph does not grow with the decoding limits."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from seq2seq.export import ExportConfig, trace, write_export
from seq2seq.files import InputError
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.serving import Predictor
from tests.helpers import tiny_model_config


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


CFG = ExportConfig(max_src_len=9, max_tgt_len=8)


@pytest.fixture(scope="module")
def model(tiny_dataset) -> Seq2Seq:
    vocab, splits = tiny_dataset
    return _model(vocab, splits["train"])


@pytest.fixture(scope="module")
def exported(model, tiny_dataset, tmp_path_factory):
    """The export folder of `model` at CFG's limits: written once, as training and exporting take most of the
    module's time."""
    folder = tmp_path_factory.mktemp("export")
    write_export(model, tiny_dataset[0], CFG, folder, "card")
    return folder


def test_exported_program_and_onnx_decode_like_generate(tiny_dataset, model, exported):
    vocab, splits = tiny_dataset
    data = splits["test"]
    src, src_len, _ = data.batch(torch.arange(len(data)))  # (B, S<=7) padded, lengths 2..5
    eager, _ = model.generate(src, src_len, max_len=CFG.max_tgt_len)
    expected = [vocab.decode(row) for row in eager.tolist()]
    assert len(set(expected)) > 5  # the model is not decoding one constant answer: the comparison means something

    # The raw ids, <pad> after <eos> included: generate's, padded to the exported graph's fixed length.
    ids = torch.nn.functional.pad(eager, (0, CFG.max_tgt_len - eager.shape[1]), value=vocab.pad_id)
    ends = {row.index(vocab.eos_id) for row in ids.tolist() if vocab.eos_id in row}
    assert len(ends) > 1 and (ids == vocab.pad_id).any()  # answers of several lengths, <pad> after them
    padded = torch.nn.functional.pad(src, (0, CFG.max_src_len - src.shape[1]), value=vocab.pad_id)
    program = torch.export.load(exported / "program.pt2").module()
    assert torch.equal(program(padded, src_len), ids)
    predictor = Predictor(exported)
    (onnx_ids,) = predictor.session.run(None, {"src": padded.numpy(), "src_len": src_len.numpy()})
    assert torch.equal(torch.from_numpy(onnx_ids), ids)
    sources = [vocab.decode(row[:n]) for row, n in zip(src.tolist(), src_len.tolist(), strict=True)]
    assert [p.prediction for p in predictor.predict(sources)] == expected  # through the Predictor's own batching
    axes = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in _onnx_io(exported)]
    assert axes == [["batch", CFG.max_src_len], ["batch"], ["batch", CFG.max_tgt_len]]


def _onnx_io(folder):
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    return [*graph.input, *graph.output]


def test_the_predictor_answers_each_line_in_order_refusing_only_the_bad_ones(tiny_dataset, model, exported):
    """A batch of good and bad lines: each bad line gets an error naming its problem and no prediction, the good
    ones keep their places and get `generate`'s answers (the rows sent to the model are only the good ones)."""
    vocab = tiny_dataset[0]
    good = ["1 2 3", "7 6 5 4 0"]
    src = torch.full((len(good), 5), vocab.pad_id)
    for row, line in enumerate(good):
        ids = vocab.encode(line)
        src[row, : len(ids)] = torch.tensor(ids)
    eager, _ = model.generate(src, torch.tensor([3, 5]), max_len=CFG.max_tgt_len)
    expected = [vocab.decode(row) for row in eager.tolist()]
    assert expected[0] != expected[1]  # swapped answers would show
    too_long = " ".join(["1"] * (CFG.max_src_len + 1))
    lines = ["", good[0], "1 x", "  ", too_long, "3 <eos>", good[1]]

    results = Predictor(exported).predict(lines)

    assert [r.source for r in results] == lines
    assert [(r.prediction, r.error) for r in results] == [
        (None, "empty input"),
        (expected[0], None),
        (None, "unknown token 'x'"),
        (None, "empty input"),  # only spaces
        (None, f"{CFG.max_src_len + 1} tokens, the model takes at most {CFG.max_src_len}"),
        (None, "unknown token '<eos>'"),  # a special is not an input token
        (expected[1], None),
    ]
    assert Predictor(exported).predict([]) == []
    # What `seq2seq predict` reads: bytes; a line that is not UTF-8 is refused alone
    as_bytes = Predictor(exported).predict([good[0].encode(), b"\xff 1", good[1].encode()])
    assert [r.prediction for r in as_bytes] == [expected[0], None, expected[1]]
    assert "can't decode byte 0xff in position 0" in as_bytes[1].error

    # In chunks (memory stays bounded on a long file), the same answers in the same places.
    chunked = Predictor(exported)
    chunked.batch_size = 2
    calls, session_run = [], chunked.session.run

    class Counting:
        def run(self, outputs, inputs):
            calls.append(inputs["src"].shape[0])  # (B, max_src_len)
            return session_run(outputs, inputs)

    chunked.session = Counting()
    assert chunked.predict(lines * 2) == results * 2
    assert calls == [2, 2]  # the 4 good lines, two at a time; the bad ones never reach the model


def test_the_exported_graph_does_not_grow_with_the_limits(tiny_dataset, model):
    vocab = tiny_dataset[0]

    def nodes(max_src_len: int, max_tgt_len: int) -> int:
        program = trace(model, vocab, ExportConfig(max_src_len, max_tgt_len))
        return sum(len(module.graph.nodes) for module in program.graph_module.modules())  # scan bodies included

    assert nodes(4, 4) == nodes(16, 24)


def test_the_served_model_refuses_what_its_signature_does_not_take(exported, tmp_path):
    """`mlflow models serve` answers 400 naming the row: a number or a null where a string goes (MLflow let them
    through: 200 for `[[3]]`, "unknown token 'None'"), and a request too large to answer in time."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from seq2seq.tracking.pyfunc_model import MAX_ROWS, Seq2SeqModel

    served = Seq2SeqModel()
    served.predictor = Predictor(exported)
    assert served.predict(None, pd.DataFrame({"source": ["1 2 3"]}))["prediction"].tolist()[0]
    for rows, said in (([3], "row 0: not a string (3)"), (["1 2", None], "row 1: not a string (null)")):
        with pytest.raises(MlflowException, match=re.escape(said)) as err:
            served.predict(None, pd.DataFrame({"source": rows}))
        assert err.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match=f"{MAX_ROWS + 1} rows; at most {MAX_ROWS} a request"):
        served.predict(None, pd.DataFrame({"source": ["1"] * (MAX_ROWS + 1)}))

    edited = tmp_path / "export"
    shutil.copytree(exported, edited)
    # Lengths outside the training sources' are predicted with a warning (the CLI's stderr) and flagged (HTTP)
    config = json.loads((edited / "export.json").read_text())
    (edited / "export.json").write_text(json.dumps(config | {"trained_src_len": [3, 5]}))
    served.predictor = Predictor(edited)
    answer = served.predict(None, pd.DataFrame({"source": ["1 2", "1 2 3", "1 2 3 4 5 6"]}))
    assert answer["outside_trained_lengths"].tolist() == [True, False, True] and answer["prediction"].all()
    warnings = [r.warning for r in served.predictor.predict(["1 2", "1 2 3"])]
    assert warnings == ["2 tokens, outside the trained lengths 3-5: the prediction may be unreliable", None]
    (edited / "export.json").write_text(json.dumps({"max_src_len": "40"}))
    with pytest.raises(InputError, match=re.escape(f"{edited / 'export.json'}: max_src_len: must be a positive")):
        Predictor(edited)
