"""The vocabulary: token <-> id, with the four specials first. Free of torch, so serving can use it alone."""

from __future__ import annotations

import json
from pathlib import Path

from seq2seq.files import InputError, describe

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
VOCAB_FILE = "vocab.json"
SPACE = "\u2581"  # a space inside text tokenised by characters (SentencePiece's mark): tokens stay space-separated


def tokenize(text: str, mode: str) -> list[str]:
    """A side of a pair, or a line to predict, as tokens: `spaces` splits on whitespace; `chars` takes every
    character (a space as SPACE); `letters` (g2p's words) the characters of the lower-cased, stripped word."""
    if mode == "spaces":
        return text.split()
    if mode == "letters":
        text = text.strip().lower()
    return [SPACE if char.isspace() else char for char in text]


def untokenize(tokens: str, mode: str) -> str:
    """Space-separated tokens back to text, as `tokenize(..., mode)` read it."""
    return "".join(tokens.split()).replace(SPACE, " ") if mode in ("chars", "letters") else tokens


class Vocab:
    """Token <-> id mapping; ids 0..3 are <pad>, <bos>, <eos>, <unk>."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, tokens: list[str]) -> None:
        if tuple(tokens[:4]) != SPECIALS or len(set(tokens)) != len(tokens):
            raise ValueError(f"a vocabulary starts with {SPECIALS} and has no duplicates, got {tokens[:8]}...")
        self.tokens = list(tokens)
        self.index = {tok: i for i, tok in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def encode(self, text: str) -> list[int]:
        """Space-separated tokens -> ids; raises KeyError naming the first unknown token."""
        ids = []
        for tok in text.split():
            if tok not in self.index or tok in SPECIALS:
                raise KeyError(f"unknown token {tok!r}")
            ids.append(self.index[tok])
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> space-separated tokens, stopping at <eos> and dropping <pad>/<bos>."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.tokens[i])
        return " ".join(out)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"tokens": self.tokens}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """The vocabulary `save` wrote; InputError naming the file if it is missing or malformed."""
        try:
            return cls(json.loads(Path(path).read_text())["tokens"])
        except FileNotFoundError:
            raise InputError(f"{path}: no vocabulary file") from None
        except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, not JSON, wrong shape
            raise InputError(f"{path}: not a vocabulary file ({describe(err)})") from None
