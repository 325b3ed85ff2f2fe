"""Synthetic data: task semantics, determinism to the byte, no train/eval leakage, vocabulary round trips."""

from __future__ import annotations

import pytest

from seq2seq.data import (
    EVAL_SPLITS,
    Vocab,
    build_vocab,
    dataset_digest,
    encode_split,
    generate_splits,
    read_split,
    read_vocab,
    write_dataset,
)
from tests.conftest import tiny_data_config


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "add"])
def test_targets_follow_the_task(task):
    cfg = tiny_data_config(task=task, num_symbols=10)
    frames, _ = generate_splits(cfg)
    for src, tgt in zip(frames["train"]["src"], frames["train"]["tgt"], strict=True):
        s, t = src.split(), tgt.split()
        if task == "copy":
            assert t == s
        elif task == "reverse":
            assert t == s[::-1]
        elif task == "sort":
            assert t == sorted(s, key=int)
        else:
            a, b = src.split(" + ")
            assert int("".join(t)) == int(a.replace(" ", "")) + int(b.replace(" ", ""))


def test_add_works_in_any_base():
    frames, _ = generate_splits(tiny_data_config(task="add", num_symbols=16))
    for src, tgt in zip(frames["val"]["src"], frames["val"]["tgt"], strict=True):
        a, b = (sum(int(d) * 16**i for i, d in enumerate(reversed(x.split()))) for x in src.split(" + "))
        assert sum(int(d) * 16**i for i, d in enumerate(reversed(tgt.split()))) == a + b


def test_lengths_and_sizes():
    cfg = tiny_data_config()
    frames, _ = generate_splits(cfg)
    assert {s: len(f) for s, f in frames.items()} == {"train": 300, "val": 40, "test": 40, "test_long": 20}
    for split in ("train", "val", "test"):
        assert frames[split]["src_len"].between(cfg.min_len, cfg.max_len).all()
    assert frames["test_long"]["src_len"].between(cfg.max_len + 1, cfg.long_max_len).all()


def test_no_eval_source_appears_in_train():
    # A small space (8^2..8^5) forces collisions, so the rejection path is exercised.
    cfg = tiny_data_config(num_symbols=3, n_train=200, n_val=100)
    frames, stats = generate_splits(cfg)
    train = set(frames["train"]["src"])
    assert stats["resampled_overlap"] > 0
    for split in EVAL_SPLITS:
        assert not train & set(frames[split]["src"])
        assert stats[f"overlap_{split}"] == 0


def test_same_params_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = tiny_data_config()
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        frames, _ = generate_splits(tiny_data_config(seed=seed))
        write_dataset(tmp_path / name, frames, build_vocab(cfg))
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b")
    assert dataset_digest(tmp_path / "a") != dataset_digest(tmp_path / "c")
    back = read_split(tmp_path / "a", "train")
    assert back["src"].dtype == "string" and back["src_len"].dtype == "int32"
    assert read_vocab(tmp_path / "a") == build_vocab(cfg)


def test_vocab_round_trip_and_unknown_token():
    vocab = build_vocab(tiny_data_config(task="add", num_symbols=10))
    assert vocab.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and "+" in vocab.tokens
    ids = vocab.encode("1 2 + 9")
    assert vocab.decode([vocab.bos_id, *ids, vocab.eos_id, vocab.pad_id, 5]) == "1 2 + 9"
    with pytest.raises(KeyError, match="'x'"):
        vocab.encode("1 x")
    with pytest.raises(KeyError, match="<eos>"):
        vocab.encode("1 <eos>")
    with pytest.raises(ValueError, match="starts with"):
        Vocab(["a", "b"])


def test_encoded_batches_are_trimmed_and_wrapped():
    cfg = tiny_data_config()
    frames, _ = generate_splits(cfg)
    vocab = build_vocab(cfg)
    data = encode_split(frames["train"], vocab)
    import torch

    src, src_len, tgt = data.batch(torch.tensor([0, 1, 2]))
    assert src.shape == (3, int(src_len.max()))
    assert (tgt[:, 0] == vocab.bos_id).all()
    for row, n in zip(tgt, data.tgt_len[:3], strict=True):
        assert row[n - 1] == vocab.eos_id and (row[n:] == vocab.pad_id).all()


def test_atomic_outputs_get_the_modes_any_file_the_user_writes_gets(tmp_path):
    from seq2seq import files

    files.write_json(tmp_path / "metrics.json", {"a": 1})
    files.atomic_dir(tmp_path / "folder", lambda tmp: (tmp / "x.csv").write_text("x\n"))
    (tmp_path / "plain.json").write_text("{}")  # what the user's umask gives any file
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~files._UMASK  # mkstemp alone gives 0600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~files._UMASK
    assert not list(tmp_path.glob(".*.tmp"))
