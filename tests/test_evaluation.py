"""Evaluation metrics on hand-made predictions, `evaluate` on a stub model, beam search against greedy decoding, and
promotion's rule."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch
from torch import nn

from seq2seq import distributed, evaluation
from seq2seq.data import encode_split, pad_batch
from seq2seq.decoding import beam_search
from seq2seq.distributed import Context
from seq2seq.evaluation import EvaluateConfig, corpus_bleu, exact_match_by_length
from seq2seq.metrics import exact_matches, token_matches
from seq2seq.model import Seq2Seq
from seq2seq.promotion import decide
from seq2seq.train import fit
from seq2seq.vocab import Vocab
from tests.helpers import tiny_model_config, tiny_train_config

PAD, EOS = 0, 2


def test_token_accuracy_and_exact_match_on_hand_made_predictions():
    ref = torch.tensor([[5, 6, 7, EOS], [5, 6, EOS, PAD], [8, EOS, PAD, PAD]])
    pred = torch.tensor(
        [
            [5, 6, 7, EOS, PAD],  # right, and wider than the reference
            [5, 7, EOS, PAD, PAD],  # one wrong token
            [8, 9, EOS, PAD, PAD],  # right token, then one too many
        ]
    )
    hits, counts = token_matches(pred, ref, PAD)
    assert hits.tolist() == [4, 2, 1] and counts.tolist() == [4, 3, 2]
    assert exact_matches(pred, ref, PAD).tolist() == [True, False, False]
    assert exact_matches(pred[:, :2], ref, PAD).tolist() == [False, False, False]  # truncated: no <eos>


def test_corpus_bleu():
    refs = ["1 2 3 4 5", "6 7 8 9"]
    assert 1.0 - 1e-12 <= corpus_bleu(refs, refs) <= 1.0  # sacrebleu's percentage / 100 can land an ulp above 1
    assert corpus_bleu(["9 9 9 9 9", "0 0 0 0"], refs) == pytest.approx(0.0)
    partial = corpus_bleu(["1 2 3 4 0", "6 7 8 9"], refs)
    assert 0.3 < partial < 1.0
    short = ["1 2", "3 4 5"]  # no reference has a 4-gram: BLEU-4 would be 0 even for perfect predictions
    assert corpus_bleu(short, short) == pytest.approx(1.0)
    assert 0.0 < corpus_bleu(["1 2", "3 4 0"], short) < 1.0


def test_exact_match_by_length():
    table = exact_match_by_length(pd.Series([3, 3, 4, 5, 5, 5]), pd.Series([True, False, True, False, False, True]))
    assert table["length"].tolist() == [3, 4, 5]
    assert table["examples"].tolist() == [2, 1, 3]
    assert table["exact_match"].tolist() == pytest.approx([0.5, 1.0, 1 / 3])


# A hand-made split and what a stub model decodes for each source: ids a=4, b=5, c=6.
SOURCES = ["a b", "a b c", "c", "b c a", "b"]
TARGETS = ["b a", "c b a", "c", "a c b", "b"]
GREEDY = {
    "a b": [5, 4, EOS],  # right: 3 of 3 tokens
    "a b c": [6, 4, 4, EOS],  # one wrong token: 3 of 4
    "c": [6, 6, EOS],  # one token too many: 1 of 2
    "b c a": [4, 6, 5],  # the right tokens, stopped by max_len before <eos>: 3 of 4, and no exact match
    "b": [EOS],  # empty: 0 of 2
}
GREEDY_TEXT = ["b a", "c a a", "c c", "a c b", ""]


class StubModel(nn.Module):
    """What `evaluate` calls, with known outputs: the logits of each step depend only on its input token (a fixed
    random table), and decoding looks the source's text up in `decoded`."""

    pad_id, bos_id, eos_id = PAD, 1, EOS

    def __init__(self, vocab: Vocab, decoded: dict[str, list[int]]) -> None:
        super().__init__()
        self.table = torch.randn(len(vocab), len(vocab), generator=torch.Generator().manual_seed(0)) * 2  # (V, V)
        self.vocab, self.decoded = vocab, decoded
        self.generate_max_lens: list[int] = []

    def forward(self, src, src_len, tgt_in, teacher_forcing=1.0, static=False):
        return self.table[tgt_in]  # (B, T, V)

    def lookup(self, src: torch.Tensor, src_len: torch.Tensor) -> torch.Tensor:
        texts = [self.vocab.decode(row[:n]) for row, n in zip(src.tolist(), src_len.tolist(), strict=True)]
        return pad_batch([self.decoded[text] for text in texts], PAD)  # (B, T')

    def generate(self, src, src_len, max_len, return_attention=False):
        self.generate_max_lens.append(max_len)
        return self.lookup(src, src_len), None


@pytest.fixture
def stub_split():
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c"])
    return vocab, encode_split(pd.DataFrame({"src": SOURCES, "tgt": TARGETS}), vocab)


def _cfg(beam_size: int) -> EvaluateConfig:
    # 5 examples in batches of 2: the last batch has one, and the batches have 7, 6 and 2 target tokens.
    return EvaluateConfig(batch_size=2, beam_size=beam_size, max_extra_len=2, n_samples=0, n_attention_plots=0)


def test_evaluate_reports_token_weighted_metrics_and_aligned_predictions(stub_split):
    """The figures the gate and promotion read (test/exact_match, test/loss in MLflow), on a split whose batches
    differ in size and token count, against values worked out by hand from the stub's known outputs."""
    vocab, data = stub_split
    model = StubModel(vocab, GREEDY)
    result = evaluation.evaluate(model, data, vocab, _cfg(beam_size=1), torch.device("cpu"))

    # The loss by hand: each target token (and <eos>) scored by the table row of the token before it.
    losses = []  # per example, per token
    for target in TARGETS:
        ids = [vocab.bos_id, *vocab.encode(target), EOS]
        losses.append([-float(torch.log_softmax(model.table[p], -1)[n]) for p, n in itertools.pairwise(ids)])
    tokens = sum(len(row) for row in losses)
    assert tokens == 15
    loss = sum(map(sum, losses)) / tokens
    # The batches' own means, averaged, differ: the metric must weight each batch by its tokens.
    batch_means = [sum(sum(losses[i]) for i in b) / sum(len(losses[i]) for i in b) for b in ([0, 1], [2, 3], [4])]
    assert abs(sum(batch_means) / 3 - loss) > 1e-2
    metrics = result.metrics
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert metrics["token_acc"] == pytest.approx((3 + 3 + 1 + 3 + 0) / 15)
    assert metrics["exact_match"] == pytest.approx(1 / 5)
    assert metrics["bleu"] == pytest.approx(corpus_bleu(GREEDY_TEXT, TARGETS))
    assert 0.0 < metrics["bleu"] < 1.0 and metrics["bleu"] != pytest.approx(corpus_bleu(TARGETS, GREEDY_TEXT))
    # Each batch decodes up to its longest source + max_extra_len.
    assert model.generate_max_lens == [3 + 2, 3 + 2, 1 + 2]
    # One row per example, in the split's order, each with its own source, target and prediction.
    assert result.predictions.to_dict("list") == {
        "source": SOURCES,
        "target": TARGETS,
        "prediction": GREEDY_TEXT,
        "exact": [True, False, False, False, False],
    }
    assert result.by_length.to_dict("list") == {"length": [1, 2, 3], "examples": [2, 1, 2], "exact_match": [0, 1, 0]}


def test_evaluate_with_a_beam_decodes_through_beam_search(stub_split, monkeypatch):
    """beam_size > 1 decodes with `beam_search` (here a stand-in that returns the references), never greedily."""
    vocab, data = stub_split
    model = StubModel(vocab, {s: [*vocab.encode(t), EOS] for s, t in zip(SOURCES, TARGETS, strict=True)})
    calls = []

    def fake_beam_search(model_, src, src_len, beam_size, max_len):
        calls.append((beam_size, max_len))
        return model.lookup(src, src_len)

    monkeypatch.setattr(evaluation, "beam_search", fake_beam_search)
    result = evaluation.evaluate(model, data, vocab, _cfg(beam_size=3), torch.device("cpu"))
    assert calls == [(3, 5), (3, 5), (3, 3)] and model.generate_max_lens == []
    assert result.metrics["token_acc"] == 1.0 and result.metrics["exact_match"] == 1.0
    assert result.metrics["bleu"] == pytest.approx(1.0)
    assert result.predictions["prediction"].tolist() == TARGETS


def test_score_over_process_shares_adds_up_to_the_whole_split(stub_split, monkeypatch):
    """Under data parallelism each process scores its contiguous share and `distributed.sum_` adds the sums up: the
    shares' sums (recorded here instead of all-reduced) add up to one process's, and their predictions, in rank
    order, are the whole split's."""
    vocab, data = stub_split
    model = StubModel(vocab, GREEDY)
    sent = []
    monkeypatch.setattr(distributed, "sum_", lambda tensor, ctx: sent.append(tensor) or tensor)
    whole = evaluation.score(model, data, 2, 2, torch.device("cpu"))
    shares = [evaluation.score(model, data, 2, 2, torch.device("cpu"), ctx=Context(r, 2, r)) for r in (0, 1)]
    assert len(sent) == 3 and sent[1][2] > 0 and sent[2][2] > 0  # both shares hold target tokens
    torch.testing.assert_close(sent[1] + sent[2], sent[0])
    decoded = [[vocab.decode(row) for row in scores.predictions] for scores in (*shares, whole)]
    assert decoded[0] + decoded[1] == decoded[2] == GREEDY_TEXT
    assert shares[0].exact + shares[1].exact == whole.exact == [True, False, False, False, False]


@pytest.fixture(scope="module")
def trained(tiny_dataset):
    vocab, splits = tiny_dataset
    torch.manual_seed(0)
    model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    cfg = tiny_train_config(max_epochs=6, patience=6, tf_end=1.0)
    result = fit(model, splits["train"], splits["val"], cfg, torch.device("cpu"), lambda *a: None, max_extra_len=3)
    model.load_state_dict(result.best_state)
    return model.eval(), splits


@torch.no_grad()
def sequence_log_prob(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) log-probability of each decoded sequence (ids up to and including its <eos>, then pad)."""
    bos = torch.full((tokens.shape[0], 1), model.bos_id, dtype=torch.long, device=tokens.device)
    logits = model(src, src_len, torch.cat([bos, tokens[:, :-1]], dim=1))  # (B, T, V)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return log_probs.masked_fill(tokens == model.pad_id, 0.0).sum(1)


def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_as_high(trained):
    model, splits = trained
    src, src_len, _ = splits["test_long"].batch(torch.arange(len(splits["test_long"])))
    greedy, _ = model.generate(src, src_len, max_len=10)
    assert torch.equal(beam_search(model, src, src_len, beam_size=1, max_len=10), greedy)
    beam = beam_search(model, src, src_len, beam_size=4, max_len=10)
    greedy_score = sequence_log_prob(model, src, src_len, greedy)
    beam_score = sequence_log_prob(model, src, src_len, beam)
    assert (beam_score >= greedy_score - 1e-4).all()
    # and somewhere strictly higher: a "beam search" that returned the greedy answer would pass the line above
    assert (beam_score > greedy_score + 1e-4).any()
    finished = (beam == EOS).any(1)
    assert finished.all()  # every beam hypothesis picked ended with <eos>


@pytest.mark.parametrize(
    ("candidate", "champion", "promote", "reason"),
    [
        ({"test/exact_match": 0.9, "test/loss": 0.2}, None, True, "no champion yet"),
        ({"test/exact_match": 0.95, "test/loss": 0.3}, {"test/exact_match": 0.9, "test/loss": 0.1}, True, "beats"),
        ({"test/exact_match": 0.8, "test/loss": 0.01}, {"test/exact_match": 0.9, "test/loss": 0.1}, False, "not beat"),
        ({"test/exact_match": 0.9, "test/loss": 0.05}, {"test/exact_match": 0.9, "test/loss": 0.1}, True, "ties"),
        ({"test/exact_match": 0.9, "test/loss": 0.1}, {"test/exact_match": 0.9, "test/loss": 0.1}, False, "not below"),
    ],
)
def test_promotion_rule(candidate, champion, promote, reason):
    decision = decide(candidate, champion)
    assert decision.promote is promote and reason in decision.reason


def test_promotion_needs_test_metrics():
    with pytest.raises(KeyError, match="candidate run has no test/exact_match"):
        decide({"test/loss": 0.1}, None)
