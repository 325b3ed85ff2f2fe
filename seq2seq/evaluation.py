"""Evaluation of a trained model on a split: loss, perplexity, token accuracy, exact match, corpus BLEU, exact
match by source length, and decoded samples (with attention) for reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sacrebleu
import torch

from seq2seq.config import require
from seq2seq.data import Encoded, Vocab
from seq2seq.decoding import beam_search
from seq2seq.metrics import exact_matches, token_matches
from seq2seq.model import Seq2Seq, sequence_loss


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` section of params.yaml."""

    batch_size: int
    beam_size: int  # 1: greedy decoding; > 1: beam search
    max_extra_len: int  # decode up to the batch's longest source + this many tokens
    n_samples: int  # decoded test examples logged as a table
    n_attention_plots: int  # attention heatmaps logged for the first test examples

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.beam_size >= 1, "beam_size", f"must be >= 1, got {self.beam_size}")
        require(self.max_extra_len >= 1, "max_extra_len", f"must be >= 1, got {self.max_extra_len}")
        require(self.n_samples >= 0, "n_samples", f"must be >= 0, got {self.n_samples}")
        require(self.n_attention_plots >= 0, "n_attention_plots", f"must be >= 0, got {self.n_attention_plots}")


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU in [0, 1] over whitespace tokens (sacrebleu, no further tokenisation of the symbols).

    N-grams up to 4, or up to the longest reference's length when that is shorter: where no reference has a
    4-gram, BLEU-4 is 0 whatever the predictions (its 4-gram precision is 0 of 0), even for perfect ones.
    """
    order = max(1, min(4, max((len(r.split()) for r in references), default=1)))
    bleu = sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=order)
    # sacrebleu's percentage, rescaled, can land an ulp above 1 (1.0000000000000004 for perfect predictions).
    return min(1.0, bleu.corpus_score(hypotheses, [references]).score / 100.0)


def exact_match_by_length(src_len: pd.Series, exact: pd.Series) -> pd.DataFrame:
    """One row per source length: its example count and exact match."""
    table = pd.DataFrame({"length": src_len.to_numpy(), "exact": exact.to_numpy(dtype=float)})
    grouped = table.groupby("length")["exact"].agg(examples="size", exact_match="mean")
    return grouped.reset_index()


@dataclass
class SplitResult:
    metrics: dict[str, float]
    by_length: pd.DataFrame  # length, examples, exact_match
    predictions: pd.DataFrame  # source, target, prediction, exact


@torch.no_grad()
def evaluate(model: Seq2Seq, data: Encoded, vocab: Vocab, cfg: EvaluateConfig, device: torch.device) -> SplitResult:
    """Decode a whole split (greedy, or beam search when beam_size > 1) and score it."""
    model.eval()
    loss_sum, correct, tokens = 0.0, 0, 0
    predictions, sources, targets, exact_all = [], [], [], []
    for start in range(0, len(data), cfg.batch_size):
        index = torch.arange(start, min(start + cfg.batch_size, len(data)))
        src, src_len, tgt = data.batch(index)
        src, tgt = src.to(device), tgt.to(device)
        tgt_out = tgt[:, 1:]  # (B, T) the reference, ending in <eos>
        n = int((tgt_out != model.pad_id).sum())
        loss_sum += float(sequence_loss(model(src, src_len, tgt[:, :-1]), tgt_out, model.pad_id)) * n
        max_len = int(src_len.max()) + cfg.max_extra_len
        if cfg.beam_size > 1:
            pred = beam_search(model, src, src_len, cfg.beam_size, max_len)
        else:
            pred, _ = model.generate(src, src_len, max_len)
        hit, count = token_matches(pred, tgt_out, model.pad_id)
        correct, tokens = correct + int(hit.sum()), tokens + int(count.sum())
        exact_all += exact_matches(pred, tgt_out, model.pad_id).tolist()
        predictions += [vocab.decode(row) for row in pred.tolist()]
        sources += [vocab.decode(row) for row in src.tolist()]
        targets += [vocab.decode(row) for row in tgt_out.tolist()]
    loss = loss_sum / tokens
    exact = pd.Series(exact_all)
    metrics = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "token_acc": correct / tokens,
        "exact_match": float(exact.mean()),
        "bleu": corpus_bleu(predictions, targets),
    }
    frame = pd.DataFrame({"source": sources, "target": targets, "prediction": predictions, "exact": exact_all})
    return SplitResult(metrics, exact_match_by_length(pd.Series(data.src_len.numpy()), exact), frame)


@torch.no_grad()
def attention_samples(
    model: Seq2Seq, data: Encoded, vocab: Vocab, count: int, max_extra_len: int, device: torch.device
) -> list[tuple[list[str], list[str], np.ndarray]]:
    """The first `count` examples greedily decoded: (source tokens, predicted tokens, weights (T, S)); the weights
    as a NumPy array, which is what the plots take (matplotlib converts a tensor through a deprecated path)."""
    model.eval()
    count = min(count, len(data))
    if count == 0:
        return []
    src, src_len, _ = data.batch(torch.arange(count))
    pred, weights = model.generate(src.to(device), src_len, int(src_len.max()) + max_extra_len, return_attention=True)
    samples = []
    for row, length, out, attn in zip(src.tolist(), src_len.tolist(), pred.tolist(), weights.cpu(), strict=True):
        steps = out.index(vocab.eos_id) + 1 if vocab.eos_id in out else len(out)
        source = [vocab.tokens[i] for i in row[:length]]
        predicted = [vocab.tokens[i] for i in out[:steps]]
        samples.append((source, predicted, attn[:steps, :length].float().numpy()))
    return samples
