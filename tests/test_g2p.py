"""G2P on the CMU Pronouncing Dictionary: the splits keep every word (with all its pronunciations) in one split,
deterministically from the seed; WER and PER as the literature scores them; and the task end to end through the
stages on a small slice, served from a word typed as a word."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from seq2seq.g2p import generate_splits, wer_by_length, wer_per, word_errors
from seq2seq.serving import Predictor
from tests.helpers import ROOT, TINY, load_stage, set_params, stage_args, tiny_data_config

SLICE = dict(task="g2p", min_len=2, max_len=8, long_max_len=10, n_train=400, n_val=60, n_test=80, n_test_long=30)


def _splits(**overrides):
    return generate_splits(tiny_data_config(**(SLICE | overrides)))


def test_every_word_lies_in_one_split_with_all_its_pronunciations():
    frames, stats = _splits()
    words = {split: set(frame["src"]) for split, frame in frames.items()}
    assert {split: len(w) for split, w in words.items()} == {"train": 400, "val": 60, "test": 80, "test_long": 30}
    for a in words:
        for b in words:
            assert a == b or not words[a] & words[b], (a, b)
    assert stats["overlap_val"] == stats["overlap_test"] == stats["overlap_test_long"] == 0
    # Sources are letters, targets ARPAbet phonemes without stress (the published stressless setting)
    lengths = frames["train"]["src"].str.split().map(len)
    assert lengths.between(2, 8).all() and frames["test_long"]["src"].str.split().map(len).between(9, 10).all()
    assert not frames["train"]["tgt"].str.contains(r"\d").any()
    several = frames["train"].groupby("src").size()
    assert (several > 1).any()  # words with two pronunciations keep both, in the same split


def test_the_split_is_the_seeds_and_the_params_choose_what_is_kept():
    first, stats = _splits()
    again, _ = _splits()
    other, _ = _splits(seed=1)
    assert all(first[s].equals(again[s]) for s in first) and not first["test"].equals(other["test"])
    letters, letters_stats = _splits(g2p_words="letters")
    assert stats["dropped_characters"] < letters_stats["dropped_characters"]  # words with an apostrophe dropped
    assert not letters["train"]["src"].str.contains("'").any()
    stressed, _ = _splits(g2p_stress=True)
    assert (
        stressed["train"]["tgt"].str.contains(r"[A-Z]+[012]").all()
        or stressed["train"]["tgt"].str.contains(r"\d").any()
    )
    with pytest.raises(ValueError, match=r"data\.n_test_long: 999999 words asked for"):
        _splits(n_test_long=999_999)


def test_wer_and_per_on_hand_made_cases():
    # Three words: "read" with two references, the prediction matching the second; "cat" one phoneme off;
    # "x" with an empty prediction.
    sources = ["r e a d", "r e a d", "c a t", "x"]
    predictions = ["R EH D", "R EH D", "K AE D", ""]
    targets = ["R IY D", "R EH D", "K AE T", "EH K S"]
    errors = word_errors(sources, predictions, targets)
    assert errors["wrong"].tolist() == [False, True, True] and errors["edits"].tolist() == [0, 1, 3]
    assert wer_per(errors) == {"wer": pytest.approx(2 / 3), "per": pytest.approx((0 + 1 + 3) / (3 + 3 + 3))}
    by_length = wer_by_length(errors)
    assert by_length.to_dict("list") == {"length": [1, 3, 4], "words": [1, 1, 1], "wer": [1.0, 1.0, 0.0]}


@pytest.mark.slow
def test_g2p_through_the_stages_on_a_slice(tmp_path, monkeypatch):
    """generate, train, evaluate and export on a slice of the dictionary; eval.json scores words (WER, PER, also
    by length), and the export takes a word as typed: `echo pipeline | seq2seq predict` prints phonemes."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **TINY)
    set_params(tmp_path, data=SLICE, export={"max_src_len": 12, "max_tgt_len": 16}, train={"max_epochs": 2})
    params, data = tmp_path / "params.yaml", tmp_path / "gen" / "data"
    for stage, args in (
        ("generate", stage_args("generate", params, tmp_path / "gen", tmp_path)),
        ("train", stage_args("train", params, tmp_path / "train", data)),
    ):
        result = CliRunner().invoke(load_stage(stage), args)
        assert result.exit_code == 0, result.output
    train = tmp_path / "train"
    evaluate = ["--params", str(params), "--data", str(data), "--checkpoint", str(train / "model.pt")]
    evaluate += ["--run-ref", str(train / "run.json"), "--history", str(train / "h.csv")]
    evaluate += ["--out-run-ref", str(tmp_path / "eval_run.json"), "--metrics", str(tmp_path / "eval.json")]
    result = CliRunner().invoke(load_stage("evaluate"), [*evaluate, "--by-length", str(tmp_path / "by_length")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert {"wer", "per", "exact_match"} <= set(scores["test"]) and 0 <= scores["test"]["wer"] <= 1
    assert "wer" in (tmp_path / "by_length" / "test.csv").read_text().splitlines()[0]
    export = ["--params", str(params), "--checkpoint", str(train / "model.pt")]
    export += ["--run-ref", str(tmp_path / "eval_run.json"), "--train-metrics", str(train / "metrics.json")]
    export += ["--eval-metrics", str(tmp_path / "eval.json"), "--out", str(tmp_path / "export")]
    result = CliRunner().invoke(load_stage("export"), export)
    assert result.exit_code == 0, result.output
    predictor = Predictor(tmp_path / "export")
    assert predictor.encode("Pipeline") == predictor.vocab.encode("p i p e l i n e")  # a word, as typed
    (answer,) = predictor.predict(["Pipeline"])
    assert answer.error is None and all(token.isupper() for token in answer.prediction.split()), answer  # phonemes
    from seq2seq.cli import main

    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "export")], input=b"pipeline\n")
    assert result.exit_code == 0 and result.stdout == answer.prediction + "\n", result.output

    # The GPU figures come from benchmarks/g2p_figures.py (that machine has no MLflow or DVC): on the same params
    # and data it must train the train stage's model, so its greedy test WER is the evaluate stage's, exactly.
    from benchmarks.g2p_figures import main as figures

    args = ["--params", str(params), "--data", str(data), "--budget-s", "1e6", "--beam-size", "2"]
    result = CliRunner().invoke(figures, [*args, "--out", str(tmp_path / "figures.json")])
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "figures.json").read_text())
    assert measured["figures"]["test/beam1"]["wer"] == scores["test"]["wer"]
    assert measured["figures"]["test/beam1"]["per"] == scores["test"]["per"]
    assert measured["epochs"] == 2 and "test_long/beam2" in measured["figures"]
