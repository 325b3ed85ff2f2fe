"""Synthetic data: task semantics, determinism to the byte, no train/eval leakage, vocabulary round trips."""

from __future__ import annotations

import pytest
import torch

from seq2seq import files
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
from tests.helpers import tiny_data_config


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
    """A batch is cut to its own longest source and target, which here are shorter than the split's; trim=False
    keeps the split's widths (one shape for a compiled step). What trimming cuts is padding only."""
    cfg = tiny_data_config()
    frames, _ = generate_splits(cfg)
    vocab = build_vocab(cfg)
    data = encode_split(frames["train"], vocab)
    index = (data.src_len < data.src.shape[1]).nonzero()[:3, 0]  # (3,) rows shorter than the split's longest
    src_width, tgt_width = int(data.src_len[index].max()), int(data.tgt_len[index].max())
    assert src_width < data.src.shape[1] and tgt_width < data.tgt.shape[1]  # so that trimming has work to do

    src, src_len, tgt = data.batch(index)
    assert src.shape == (3, src_width) and tgt.shape == (3, tgt_width)
    assert torch.equal(src_len, data.src_len[index])
    assert (tgt[:, 0] == vocab.bos_id).all()
    for row, n in zip(tgt, data.tgt_len[index], strict=True):
        assert row[n - 1] == vocab.eos_id and (row[n:] == vocab.pad_id).all()

    full_src, full_len, full_tgt = data.batch(index, trim=False)
    assert full_src.shape == (3, data.src.shape[1]) and full_tgt.shape == (3, data.tgt.shape[1])
    assert torch.equal(full_len, src_len)
    assert torch.equal(full_src[:, :src_width], src) and (full_src[:, src_width:] == vocab.pad_id).all()
    assert torch.equal(full_tgt[:, :tgt_width], tgt) and (full_tgt[:, tgt_width:] == vocab.pad_id).all()


def test_atomic_outputs_get_the_modes_any_file_the_user_writes_gets(tmp_path):
    files.write_json(tmp_path / "metrics.json", {"a": 1})
    files.atomic_dir(tmp_path / "folder", lambda tmp: (tmp / "x.csv").write_text("x\n"))
    (tmp_path / "plain.json").write_text("{}")  # what the user's umask gives any file
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~files._UMASK  # mkstemp alone gives 0600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~files._UMASK
    assert not list(tmp_path.glob(".*.tmp"))


class WriterFailed(Exception):
    pass


def _fail(exception: type[BaseException]):
    """A writer that leaves part of its output in the temp path, then raises."""

    def write(tmp):
        if tmp.is_dir():
            (tmp / "part.csv").write_text("half")
        else:
            tmp.write_text("half")
        raise exception("the writer failed")

    return write


@pytest.mark.parametrize("exception", [WriterFailed, KeyboardInterrupt])  # Ctrl-C or a kill mid-write, too
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, exception):
    """What a killed or failing stage leaves: its previous output, whole, and nothing else."""
    path = tmp_path / "metrics.json"
    files.write_json(path, {"old": 1})
    before = path.read_bytes()
    with pytest.raises(exception, match="the writer failed"):
        files.atomic_write(path, _fail(exception))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no .metrics.json.*.tmp left


@pytest.mark.parametrize("exception", [WriterFailed, KeyboardInterrupt])
def test_a_failed_atomic_dir_keeps_the_old_folder_and_leaves_no_temp_folder(tmp_path, exception):
    path = tmp_path / "plots"
    files.atomic_dir(path, lambda tmp: (tmp / "old.csv").write_text("old\n"))
    with pytest.raises(exception, match="the writer failed"):
        files.atomic_dir(path, _fail(exception))
    assert sorted(p.name for p in path.iterdir()) == ["old.csv"] and (path / "old.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]  # no .plots.*.tmp left
