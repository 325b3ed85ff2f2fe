"""Evaluation metrics on hand-made predictions, beam search against greedy decoding, and promotion's rule."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from seq2seq.decoding import beam_search, sequence_log_prob
from seq2seq.evaluation import corpus_bleu, exact_match_by_length
from seq2seq.metrics import exact_matches, token_matches
from seq2seq.model import Seq2Seq
from seq2seq.promotion import decide
from seq2seq.train import fit
from tests.conftest import tiny_model_config, tiny_train_config

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
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)
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


@pytest.fixture(scope="module")
def trained(tiny_dataset):
    vocab, splits = tiny_dataset
    torch.manual_seed(0)
    model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    cfg = tiny_train_config(max_epochs=6, patience=6, tf_end=1.0)
    result = fit(model, splits["train"], splits["val"], cfg, torch.device("cpu"), lambda *a: None)
    model.load_state_dict(result.best_state)
    return model.eval(), splits


def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_as_high(trained):
    model, splits = trained
    src, src_len, _ = splits["test_long"].batch(torch.arange(len(splits["test_long"])))
    greedy, _ = model.generate(src, src_len, max_len=10)
    assert torch.equal(beam_search(model, src, src_len, beam_size=1, max_len=10), greedy)
    beam = beam_search(model, src, src_len, beam_size=4, max_len=10)
    greedy_score = sequence_log_prob(model, src, src_len, greedy)
    beam_score = sequence_log_prob(model, src, src_len, beam)
    assert (beam_score >= greedy_score - 1e-4).all()
    finished = (beam == EOS).any(1)
    assert finished.all()  # every beam hypothesis picked ended with <eos>


@pytest.mark.parametrize(
    ("candidate", "champion", "promote", "reason"),
    [
        ({"test_exact_match": 0.9, "test_loss": 0.2}, None, True, "no champion yet"),
        ({"test_exact_match": 0.95, "test_loss": 0.3}, {"test_exact_match": 0.9, "test_loss": 0.1}, True, "beats"),
        ({"test_exact_match": 0.8, "test_loss": 0.01}, {"test_exact_match": 0.9, "test_loss": 0.1}, False, "not beat"),
        ({"test_exact_match": 0.9, "test_loss": 0.05}, {"test_exact_match": 0.9, "test_loss": 0.1}, True, "ties"),
        ({"test_exact_match": 0.9, "test_loss": 0.1}, {"test_exact_match": 0.9, "test_loss": 0.1}, False, "not below"),
    ],
)
def test_promotion_rule(candidate, champion, promote, reason):
    decision = decide(candidate, champion)
    assert decision.promote is promote and reason in decision.reason


def test_promotion_needs_test_metrics():
    with pytest.raises(KeyError, match="candidate run has no test_exact_match"):
        decide({"test_loss": 0.1}, None)
