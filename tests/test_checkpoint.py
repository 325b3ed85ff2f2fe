"""Checkpoints: one that `save_checkpoint` wrote loads back as the same model, and one from another format version
or whose weights do not fit its own model config is refused with an InputError naming the file (not a torch
traceback about state dicts, nor a model silently built from part of its weights)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from seq2seq.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from seq2seq.data import build_vocab
from seq2seq.files import InputError
from seq2seq.model import Seq2Seq
from tests.helpers import tiny_data_config, tiny_model_config


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of a tiny 2-layer model, and that model."""
    vocab = build_vocab(tiny_data_config())
    torch.manual_seed(0)
    model = Seq2Seq(tiny_model_config(num_layers=2), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, vocab, {"epoch": 3})
    return path, model


def _rewrite(path, **changes) -> None:
    """The checkpoint at `path` with some of its payload's entries replaced (None: removed)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload.update(changes)
    torch.save({k: v for k, v in payload.items() if v is not None}, path)


def test_a_saved_checkpoint_loads_back_as_the_same_model(checkpoint):
    # The refusals below then come from what was rewritten, not from a checkpoint that never loads.
    path, model = checkpoint
    loaded, vocab, payload = load_checkpoint(path)
    assert vocab == build_vocab(tiny_data_config())
    assert payload["epoch"] == 3 and payload["format_version"] == FORMAT_VERSION
    assert loaded.cfg == model.cfg and not loaded.training
    for (name, theirs), (_, ours) in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(theirs, ours), name


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, None], ids=["newer", "missing"])
def test_a_checkpoint_of_another_format_version_is_refused(checkpoint, version):
    path, _ = checkpoint
    _rewrite(path, format_version=version)
    message = f"{path}: checkpoint format {version!r}, expected {FORMAT_VERSION}"
    with pytest.raises(InputError, match=rf"^{re.escape(message)}$"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "change",
    [{"hidden_dim": 16}, {"emb_dim": 8}, {"num_layers": 1}, {"num_layers": 3}],
    ids=["narrower", "smaller-embedding", "unexpected-weights", "missing-weights"],
)
def test_a_checkpoint_whose_weights_do_not_fit_its_model_config_is_refused(checkpoint, change):
    path, model = checkpoint
    _rewrite(path, model_config={**dataclasses.asdict(model.cfg), **change})
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: its weights do not fit its model config \("):
        load_checkpoint(path)
