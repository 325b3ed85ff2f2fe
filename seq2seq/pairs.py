"""The user's own pairs (`data.task: file`): a tab-separated file, one `source<TAB>target` pair a line, each side
tokenised by characters or by spaces (data.file_src_tokens, data.file_tgt_tokens). A bad file is refused at its
first bad line, named with its number. And the split that g2p shares: every source with all its targets in one
split, the sources shuffled by the seed and dealt out."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from seq2seq.config import ConfigError
from seq2seq.files import InputError
from seq2seq.vocab import SPECIALS, tokenize

if TYPE_CHECKING:
    from seq2seq.data import DataConfig

SPLITS = ("train", "val", "test", "test_long")


def _line_error(where: str, text: str, limits: tuple[int, int], cfg: DataConfig) -> str | tuple[str, str]:
    """The line's problem, or its (source, target) as space-separated tokens."""
    tabs = text.count("\t")
    if tabs != 1:
        return f"{where}: no tab between source and target" if tabs == 0 else f"{where}: {tabs} tabs, expected one"
    source, target = text.split("\t")
    tokens = {"source": tokenize(source, cfg.file_src_tokens), "target": tokenize(target, cfg.file_tgt_tokens)}
    for side, toks in tokens.items():
        if not toks:
            return f"{where}: empty {side}"
        reserved = sorted(set(toks) & set(SPECIALS))
        if reserved:
            return f"{where}: the {side} holds {reserved[0]}, which the vocabulary reserves"
    if len(tokens["source"]) > limits[0]:
        return f"{where}: a source of {len(tokens['source'])} tokens, over export.max_src_len ({limits[0]})"
    if len(tokens["target"]) >= limits[1]:  # the exported decoder's steps hold the target and <eos>
        return f"{where}: a target of {len(tokens['target'])} tokens; export.max_tgt_len ({limits[1]}) must exceed it"
    return " ".join(tokens["source"]), " ".join(tokens["target"])


def read_pairs(
    path: Path | None, cfg: DataConfig, limits: tuple[int, int]
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """source -> its distinct targets (tokens separated by spaces), and counts of the file's pairs; InputError at the
    first bad line. `limits`: export.max_src_len and max_tgt_len, which every pair must fit to be served."""
    if path is None:
        raise InputError("data.task file reads the pairs file that dvc.yaml names (--pairs); none was given")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; put your tab-separated pairs there and `dvc add` it") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    entries: dict[str, list[str]] = defaultdict(list)
    stats = {"file_pairs": 0, "duplicate_pairs": 0}
    for number, line in enumerate(raw.split(b"\n"), 1):
        line = line.removesuffix(b"\r")  # a file saved on Windows
        if not line.strip():
            continue  # blank lines, the final newline among them
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{path}:{number}: not UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})"
            ) from None
        pair = _line_error(f"{path}:{number}", text, limits, cfg)
        if isinstance(pair, str):
            raise InputError(pair)
        source, target = pair
        stats["file_pairs"] += 1
        if target in entries[source]:
            stats["duplicate_pairs"] += 1
        else:
            entries[source].append(target)
    return dict(entries), stats


def generate_splits(
    cfg: DataConfig, path: Path | None, limits: tuple[int, int]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The file's pairs, dealt out into the splits; a file short of what the params ask is named (exit 1)."""
    entries, stats = read_pairs(path, cfg, limits)
    try:
        frames, dealt = deal(entries, cfg, "sources", "the file")
    except ConfigError as err:
        raise InputError(f"{path}: {err}") from None
    return frames, stats | dealt


def deal(
    entries: dict[str, list[str]], cfg: DataConfig, noun: str, origin: str
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Sources (space-separated tokens) of min_len..max_len tokens to train, val and test; of max_len+1..long_max_len
    to test_long. Each source with all its targets, in one split only: shuffled by the seed, then dealt out.
    `noun` names a source in the counts and errors (words, sources), `origin` where they come from."""
    sources = sorted(entries)
    shuffled = [sources[i] for i in np.random.default_rng(cfg.seed).permutation(len(sources))]
    length = {source: source.count(" ") + 1 for source in sources}
    short = [s for s in shuffled if cfg.min_len <= length[s] <= cfg.max_len]
    long = [s for s in shuffled if cfg.max_len < length[s] <= cfg.long_max_len]
    stats = {"dropped_length": len(sources) - len(short) - len(long)}
    sizes = {"val": cfg.n_val, "test": cfg.n_test, "train": cfg.n_train}
    if sum(sizes.values()) > len(short):
        asked = f"{sum(sizes.values())} {noun} asked for (n_train + n_val + n_test)"
        raise ConfigError("data.n_train", f"{asked}, {origin} has {len(short)} of min_len..max_len tokens")
    if cfg.n_test_long > len(long):
        asked = f"{cfg.n_test_long} {noun} asked for"
        raise ConfigError("data.n_test_long", f"{asked}, {origin} has {len(long)} of max_len+1..long_max_len tokens")
    dealt, start = {}, 0
    for split, size in sizes.items():
        dealt[split], start = short[start : start + size], start + size
    dealt["test_long"] = long[: cfg.n_test_long]
    frames = {split: _frame(dealt[split], entries) for split in SPLITS}
    train = set(frames["train"]["src"])
    stats |= {f"overlap_{s}": int(frames[s]["src"].isin(train).sum()) for s in SPLITS[1:]}
    return frames, stats | {f"{noun}_{s}": len(dealt[s]) for s in SPLITS}


def _frame(sources: list[str], entries: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(source, target) for source in sources for target in entries[source]]
    frame = pd.DataFrame(rows, columns=["src", "tgt"]).astype({"src": "string", "tgt": "string"})
    frame["src_len"] = frame["src"].str.count(" ").add(1).astype("int32")
    frame["tgt_len"] = frame["tgt"].str.count(" ").add(1).astype("int32")
    return frame


def token_modes(cfg: DataConfig) -> tuple[str, str]:
    """How a line is read as source tokens, and the target tokens written as text (`vocab.tokenize`): g2p reads a
    word as its letters and writes phonemes; file as data.file_src_tokens and file_tgt_tokens say; the others
    read and write tokens separated by spaces."""
    if cfg.task == "g2p":
        return "letters", "spaces"
    if cfg.task == "file":
        return cfg.file_src_tokens, cfg.file_tgt_tokens
    return "spaces", "spaces"


def vocabulary(frames: dict[str, pd.DataFrame]) -> list[str]:
    """The source tokens, then the target tokens not among them, each sorted: the same data gives the same ids."""
    sources = sorted({token for frame in frames.values() for text in frame["src"] for token in text.split()})
    targets = {token for frame in frames.values() for text in frame["tgt"] for token in text.split()}
    return sources + sorted(targets - set(sources))
