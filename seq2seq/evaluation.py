"""Scoring a split: `score`, the one scorer of validation (during training) and of the evaluate stage (loss, token
accuracy, exact match), and on top of it for the evaluate stage: perplexity, corpus BLEU, exact match by source
length, the predictions, and decoded samples (with attention) for reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from seq2seq import distributed, g2p
from seq2seq.config import require
from seq2seq.data import Encoded, Vocab
from seq2seq.decoding import beam_search
from seq2seq.distributed import SINGLE, Context
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
    import sacrebleu  # here, not at the top: reading params (which imports this module) should not load it

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
class Scores:
    """What `score` returns: the split's metrics, and each example's prediction for the evaluate stage's tables."""

    metrics: dict[str, float]  # loss (teacher-forced, per target token), token_acc, exact_match
    predictions: list[list[int]]  # this process's examples in order: the decoded ids, <eos> then <pad>
    exact: list[bool]  # the same examples: prediction == reference


@torch.no_grad()
def score(
    model: Seq2Seq,
    data: Encoded,
    batch_size: int,
    max_extra_len: int,
    device: torch.device,
    *,
    beam_size: int = 1,
    bf16: bool = False,
    ctx: Context = SINGLE,
) -> Scores:
    """The teacher-forced loss, and the token accuracy and exact match of the decoded split: validation and test
    are scored by this one function, so their figures mean the same thing.

    Each batch decodes (greedily, or by beam search when beam_size > 1) up to its longest source + max_extra_len
    tokens. `bf16`: autocast on CUDA. Under data parallelism each process scores its own contiguous share and the
    sums are added up, so every process gets the whole split's metrics (and its own share's predictions).
    """
    model.eval()
    # Sums on the device, read once at the end; the loss in float64, as exact as a sum of Python floats.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = tokens = exact = torch.zeros((), dtype=torch.long, device=device)
    predictions, exact_rows = [], []
    share = torch.arange(len(data)).tensor_split(ctx.world)[ctx.rank]
    for start in range(0, len(share), batch_size):
        src, src_len, tgt = data.batch(share[start : start + batch_size])
        src, tgt = src.to(device), tgt.to(device)
        tgt_out = tgt[:, 1:]  # (B, T) the reference, ending in <eos>
        max_len = int(src_len.max()) + max_extra_len
        with distributed.autocast(device, bf16):
            loss = sequence_loss(model(src, src_len, tgt[:, :-1]), tgt_out, model.pad_id)
            if beam_size > 1:
                pred = beam_search(model, src, src_len, beam_size, max_len)  # (B, T')
            else:
                pred, _ = model.generate(src, src_len, max_len)  # (B, T')
        hit, count = token_matches(pred, tgt_out, model.pad_id)  # (B,), (B,)
        matched = exact_matches(pred, tgt_out, model.pad_id)  # (B,)
        loss_sum += loss.double() * count.sum()  # the batch's mean, weighted by its target tokens
        correct, tokens, exact = correct + hit.sum(), tokens + count.sum(), exact + matched.sum()
        predictions += pred.tolist()
        exact_rows += matched.tolist()
    sums = distributed.sum_(torch.stack([loss_sum, correct.double(), tokens.double(), exact.double()]), ctx)
    loss_total, correct_total, n_tokens, exact_total = sums.tolist()
    metrics = {
        "loss": loss_total / n_tokens,
        "token_acc": correct_total / n_tokens,
        "exact_match": exact_total / len(data),
    }
    return Scores(metrics, predictions, exact_rows)


@dataclass
class SplitResult:
    """A split's evaluation, as the evaluate stage writes and logs it."""

    metrics: dict[str, float]
    by_length: pd.DataFrame  # length, examples, exact_match
    predictions: pd.DataFrame  # source, target, prediction, exact


def evaluate(
    model: Seq2Seq, data: Encoded, vocab: Vocab, cfg: EvaluateConfig, device: torch.device, words: bool = False
) -> SplitResult:
    """`score` with the evaluate stage's settings, and on top of it: perplexity, BLEU, exact match by source
    length, and one row per example (source, target, prediction, exact). `words`: sources with several references
    (G2P's pronunciations), scored as words too: WER and PER, and WER by length."""
    scores = score(model, data, cfg.batch_size, cfg.max_extra_len, device, beam_size=cfg.beam_size)
    sources = [vocab.decode(row) for row in data.src.tolist()]
    targets = [vocab.decode(row) for row in data.tgt.tolist()]
    predictions = [vocab.decode(row) for row in scores.predictions]
    loss, token_acc, exact_match = (scores.metrics[k] for k in ("loss", "token_acc", "exact_match"))
    metrics = {"loss": loss, "perplexity": math.exp(loss), "token_acc": token_acc, "exact_match": exact_match}
    metrics["bleu"] = corpus_bleu(predictions, targets)
    by_length = exact_match_by_length(pd.Series(data.src_len.numpy()), pd.Series(scores.exact))
    if words:
        errors = g2p.word_errors(sources, predictions, targets)
        metrics |= g2p.wer_per(errors)
        by_length = by_length.merge(g2p.wer_by_length(errors), on="length", how="left")
    frame = pd.DataFrame({"source": sources, "target": targets, "prediction": predictions, "exact": scores.exact})
    return SplitResult(metrics, by_length, frame)


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
