"""Synthetic sequence tasks, the vocabulary, and batches of padded token ids.

Tasks (`data.task`): copy, reverse, sort (symbols by value) and add (two base-`num_symbols` integers, most
significant digit first, separated by `+`, to their sum); g2p and file (seq2seq/g2p.py, pairs.py). A dataset
folder holds a parquet file per split and `vocab.json`; sequences are stored as space-separated tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from seq2seq.config import ConfigError, require
from seq2seq.files import InputError, describe
from seq2seq.vocab import SPECIALS, VOCAB_FILE, Vocab

PLUS = "+"
SPLITS = ("train", "val", "test", "test_long")
EVAL_SPLITS = ("val", "test", "test_long")
# Rejection sampling keeps evaluation sources out of train; past this many draws per wanted example the task's
# space is too small for the requested sizes and we say so instead of looping.
_MAX_DRAWS_PER_EXAMPLE = 50


@dataclass(frozen=True)
class DataConfig:
    """The `data` section of params.yaml."""

    task: Literal["copy", "reverse", "sort", "add", "g2p", "file"]
    num_symbols: int  # vocabulary size = num_symbols + 4 specials (+1 for `+` in add, where it is the base)
    min_len: int  # for add: digits per operand
    max_len: int
    long_max_len: int  # test_long draws lengths in (max_len, long_max_len]
    n_train: int
    n_val: int
    n_test: int
    n_test_long: int
    seed: int
    g2p_words: Literal["letters", "letters_apostrophes"]  # g2p: the dictionary's words kept (the others counted)
    g2p_stress: bool  # g2p: keep the vowels' stress digits (AH0, AH1); the published stressless figures drop them
    file_src_tokens: Literal["chars", "spaces"]  # file: a source's tokens are its characters, or its words
    file_tgt_tokens: Literal["chars", "spaces"]  # file: likewise for the target

    def __post_init__(self) -> None:
        require(self.num_symbols >= 2, "num_symbols", f"must be >= 2, got {self.num_symbols}")
        require(self.min_len >= 1, "min_len", f"must be >= 1, got {self.min_len}")
        require(self.max_len >= self.min_len, "max_len", f"must be >= min_len ({self.min_len}), got {self.max_len}")
        require(
            self.long_max_len > self.max_len,
            "long_max_len",
            f"must be > max_len ({self.max_len}) so test_long is longer than training, got {self.long_max_len}",
        )
        for name in ("n_train", "n_val", "n_test", "n_test_long"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


def build_vocab(cfg: DataConfig, frames: dict[str, pd.DataFrame] | None = None) -> Vocab:
    """The specials, then the task's tokens: the symbols (and `+`), or those in `frames` (g2p's letters and
    phonemes, the tokens of the user's pairs)."""
    if cfg.task in ("g2p", "file"):
        from seq2seq.pairs import vocabulary

        return Vocab([*SPECIALS, *vocabulary(frames)])
    symbols = [str(i) for i in range(cfg.num_symbols)]
    return Vocab([*SPECIALS, *symbols, *([PLUS] if cfg.task == "add" else [])])


def _digits(n: int, base: int) -> list[int]:
    out = [n % base]
    while n >= base:
        n //= base
        out.append(n % base)
    return out[::-1]


def _example(rng: np.random.Generator, cfg: DataConfig, lo: int, hi: int) -> tuple[list[str], list[str]]:
    """One (source, target) pair as token lists, with lengths (operand digits for add) in [lo, hi]."""
    base = cfg.num_symbols
    if cfg.task == "add":
        operands = []
        for _ in range(2):
            n = int(rng.integers(lo, hi + 1))
            # No leading zero: a multi-digit operand starts with a digit in 1..base-1.
            digits = [int(rng.integers(1 if n > 1 else 0, base)), *rng.integers(0, base, n - 1).tolist()]
            operands.append(digits)
        a, b = (_value(d, base) for d in operands)
        src = [str(d) for d in operands[0]] + [PLUS] + [str(d) for d in operands[1]]
        return src, [str(d) for d in _digits(a + b, base)]
    seq = rng.integers(0, base, int(rng.integers(lo, hi + 1))).tolist()
    tgt = {"copy": seq, "reverse": seq[::-1], "sort": sorted(seq)}[cfg.task]
    return [str(s) for s in seq], [str(s) for s in tgt]


def _value(digits: list[int], base: int) -> int:
    value = 0
    for d in digits:
        value = value * base + d
    return value


def generate_splits(cfg: DataConfig, pairs: Path | None = None, limits=(0, 0)) -> tuple[dict[str, pd.DataFrame], dict]:
    """Draw every split; evaluation sources never appear in train. Returns the frames and leakage counts. The file
    task reads `pairs`, whose every pair must fit `limits` (export.max_src_len, export.max_tgt_len)."""
    if cfg.task == "g2p":  # a dictionary's words, dealt out rather than drawn
        from seq2seq.g2p import generate_splits as g2p_splits

        return g2p_splits(cfg)
    if cfg.task == "file":
        from seq2seq.pairs import generate_splits as file_splits

        return file_splits(cfg, pairs, limits)
    frames: dict[str, pd.DataFrame] = {}
    seen_train: set[str] = set()
    stats = {"resampled_overlap": 0}
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, "test_long": cfg.n_test_long}
    for index, split in enumerate(SPLITS):
        # One independent stream per split: resizing an evaluation split leaves every other split unchanged.
        # (Resizing train can change the others: their sources that train now holds are drawn again.)
        rng = np.random.default_rng([cfg.seed, index])
        lo, hi = (cfg.max_len + 1, cfg.long_max_len) if split == "test_long" else (cfg.min_len, cfg.max_len)
        rows: list[tuple[str, str]] = []
        draws = 0
        while len(rows) < sizes[split]:
            draws += 1
            if draws > _MAX_DRAWS_PER_EXAMPLE * sizes[split]:
                raise ConfigError(
                    f"data.n_{split}" if split != "test_long" else "data.n_test_long",
                    f"could not draw {sizes[split]} {split} sources unseen in train; "
                    "the task space is too small: raise num_symbols or max_len, or lower the split sizes",
                )
            src, tgt = _example(rng, cfg, lo, hi)
            src_text = " ".join(src)
            if split != "train" and src_text in seen_train:
                stats["resampled_overlap"] += 1
                continue
            rows.append((src_text, " ".join(tgt)))
        frame = pd.DataFrame(rows, columns=["src", "tgt"]).astype({"src": "string", "tgt": "string"})
        frame["src_len"] = frame["src"].str.count(" ").add(1).astype("int32")
        frame["tgt_len"] = frame["tgt"].str.count(" ").add(1).astype("int32")
        frames[split] = frame
        if split == "train":
            seen_train = set(frame["src"])
    stats.update({f"overlap_{s}": int(frames[s]["src"].isin(seen_train).sum()) for s in EVAL_SPLITS})
    return frames, stats


def length_histogram(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Source-length counts, one row per length and one column per split (for a DVC plot)."""
    counts = {s: f["src_len"].value_counts() for s, f in frames.items()}
    table = pd.DataFrame(counts).fillna(0).astype("int64").sort_index()
    return table.rename_axis("length").reset_index()


def write_dataset(out_dir: Path, frames: dict[str, pd.DataFrame], vocab: Vocab) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        # No index, pinned compression: the same frames give byte-identical files.
        frame.to_parquet(out_dir / f"{split}.parquet", index=False, compression="zstd", engine="pyarrow")
    vocab.save(out_dir / VOCAB_FILE)


def read_split(data_dir: Path, split: str) -> pd.DataFrame:
    """A split's frame (columns src, tgt); InputError naming the file if it is missing or malformed."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: no {split} split; run the generate stage first")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, TypeError) as err:  # pyarrow's errors derive from these
        raise InputError(f"{path}: not a readable parquet file ({describe(err)})") from None
    missing = sorted({"src", "tgt"} - set(frame.columns))
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} column (it has {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise InputError(f"{path}: no examples")
    return frame


def read_vocab(data_dir: Path) -> Vocab:
    return Vocab.load(Path(data_dir) / VOCAB_FILE)


def load_split(data_dir: Path, split: str, vocab: Vocab) -> Encoded:
    """`read_split` then `encode_split`, with an InputError naming the file for text the vocabulary cannot encode."""
    frame = read_split(data_dir, split)
    path = Path(data_dir) / f"{split}.parquet"
    for column in ("src", "tgt"):
        texts = frame[column]
        if texts.isna().any() or not all(isinstance(text, str) for text in texts):
            raise InputError(f"{path}: column {column} holds values that are not text")
    try:
        return encode_split(frame, vocab)
    except KeyError as err:  # Vocab.encode: a token the vocabulary does not have
        raise InputError(f"{path}: {err.args[0]} (not in {VOCAB_FILE})") from None


@dataclass(frozen=True)
class Encoded:
    """A split as padded id tensors on the CPU; targets are wrapped as <bos> ... <eos>."""

    src: torch.Tensor  # (N, S_max) int64
    src_len: torch.Tensor  # (N,) int64
    tgt: torch.Tensor  # (N, T_max + 2) int64
    tgt_len: torch.Tensor  # (N,) int64, counting <bos> and <eos>

    def __len__(self) -> int:
        return self.src.shape[0]

    def batch(self, index: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows `index`, trimmed to the batch's own longest source and target; `trim=False` keeps the split's
        widths, so that batches of one size have one shape (a compiled, CUDA-graphed step wants few shapes)."""
        src_len = self.src_len[index]
        tgt_len = self.tgt_len[index]
        if not trim:
            return self.src[index], src_len, self.tgt[index]
        return self.src[index, : int(src_len.max())], src_len, self.tgt[index, : int(tgt_len.max())]


def pad_batch(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_split(frame: pd.DataFrame, vocab: Vocab) -> Encoded:
    src = [vocab.encode(s) for s in frame["src"]]
    tgt = [[vocab.bos_id, *vocab.encode(t), vocab.eos_id] for t in frame["tgt"]]
    return Encoded(
        src=pad_batch(src, vocab.pad_id),
        src_len=torch.tensor([len(s) for s in src], dtype=torch.long),
        tgt=pad_batch(tgt, vocab.pad_id),
        tgt_len=torch.tensor([len(t) for t in tgt], dtype=torch.long),
    )


def dataset_digest(data_dir: Path, pattern: str = "*") -> str:
    """sha256 over the names and bytes of the dataset folder's files matching `pattern`: an MLflow run's data tags."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(data_dir).glob(pattern) if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
