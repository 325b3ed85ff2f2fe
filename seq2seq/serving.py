"""String in, string out: predictions from an export folder through onnxruntime (no torch, no mlflow).

Each input line is checked on its own; a bad line (empty, an unknown token, too long) gets an error naming the
problem instead of a prediction, and never stops the other lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2seq.files import InputError, describe, read_json
from seq2seq.vocab import VOCAB_FILE, Vocab, tokenize, untokenize

# The export folder's layout (seq2seq/export.py writes it).
PROGRAM_FILE = "program.pt2"
ONNX_FILE = "model.onnx"
CONFIG_FILE = "export.json"
CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class Prediction:
    source: str
    prediction: str | None  # None when the line was refused
    error: str | None = None
    warning: str | None = None  # predicted, from a length outside the training sources' (`3` gives `3 3`)


class Predictor:
    # Lines per onnxruntime call: the decoder's activations grow with the batch (about 0.2 MiB a line at the
    # default limits), so a file of 100k lines in one call would need ~20 GB.
    batch_size = 512

    def __init__(self, export_dir: Path) -> None:
        import onnxruntime

        export_dir = Path(export_dir)
        if not (export_dir / ONNX_FILE).is_file():
            raise FileNotFoundError(f"{export_dir} is not an export folder (no {ONNX_FILE}); run the export stage")
        self.config = read_json(export_dir / CONFIG_FILE, "export config")
        limit = self.config.get("max_src_len") if isinstance(self.config, dict) else None
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:  # a hand-edited file, named here
            raise InputError(f"{export_dir / CONFIG_FILE}: max_src_len: must be a positive integer, got {limit!r}")
        self.vocab = Vocab.load(export_dir / VOCAB_FILE)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self.session = onnxruntime.InferenceSession(str(export_dir / ONNX_FILE), options)
        except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail), not OSError or ValueError
            raise InputError(f"{export_dir / ONNX_FILE}: not a loadable ONNX model ({describe(err)})") from None

    def encode(self, line: str | bytes) -> list[int]:
        """Ids of one source line (bytes: UTF-8); ValueError naming the problem."""
        if isinstance(line, bytes):
            line = line.decode()  # UnicodeDecodeError is a ValueError: this line is refused, the others predicted
        # g2p: a word, spelt out as the model read it; the user's pairs: as data.file_src_tokens said. (An export
        # from before target_tokens said "words" for spaces.)
        mode = self.config.get("source_tokens", "spaces")
        try:
            ids = self.vocab.encode(" ".join(tokenize(line, "spaces" if mode == "words" else mode)))
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if not ids:
            raise ValueError("empty input")
        if len(ids) > self.config["max_src_len"]:
            raise ValueError(f"{len(ids)} tokens, the model takes at most {self.config['max_src_len']}")
        return ids

    def untrained(self, length: int) -> str | None:
        """A warning when `length` tokens lie outside the training sources' lengths (an export that records them)."""
        lo, hi = self.config.get("trained_src_len") or (1, self.config["max_src_len"])
        if lo <= length <= hi:
            return None
        return f"{length} tokens, outside the trained lengths {lo}-{hi}: the prediction may be unreliable"

    def predict(self, lines: list[str] | list[bytes]) -> list[Prediction]:
        results: list[Prediction | None] = [None] * len(lines)
        rows, positions = [], []
        for i, line in enumerate(lines):
            try:
                rows.append(self.encode(line))
                positions.append(i)
            except ValueError as err:
                results[i] = Prediction(line, None, str(err))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            src = np.full((len(chunk), self.config["max_src_len"]), self.vocab.pad_id, dtype=np.int64)
            for r, ids in enumerate(chunk):
                src[r, : len(ids)] = ids
            src_len = np.array([len(ids) for ids in chunk], dtype=np.int64)
            (out,) = self.session.run(None, {"src": src, "src_len": src_len})  # (B, max_tgt_len)
            done = zip(positions[start : start + self.batch_size], src_len.tolist(), out.tolist(), strict=True)
            for i, length, ids in done:
                text = untokenize(self.vocab.decode(ids), self.config.get("target_tokens", "spaces"))
                results[i] = Prediction(lines[i], text, warning=self.untrained(length))
        return results  # type: ignore[return-value]
