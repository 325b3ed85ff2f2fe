"""The user's own pairs (`data.task: file`): the file's sides tokenised as the params say, the split keeping every
source in one split, a bad file refused in one line naming the file and the line with nothing written, and the
README's way from a file of pairs to a served model (dvc add, apply-profile, dvc repro, seq2seq predict)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from click.testing import CliRunner

from seq2seq.vocab import SPACE, tokenize, untokenize
from tests.helpers import ROOT, TINY, load_stage, run, set_params, stage_args, tiny_repo

FILE = {"task": "file", "file_src_tokens": "chars", "file_tgt_tokens": "chars"}


def _pairs(n_short: int = 400, n_long: int = 30, seed: int = 0) -> str:
    """Lines `source<TAB>target`: a word of 2-5 characters (some with a space in it), or of 6-7 for test_long, to
    its letters reversed and upper-cased without the space; a few sources with a second target."""
    rng = random.Random(seed)
    words = set()
    for lo, hi, n in ((2, 5, n_short), (6, 7, n_long)):
        while sum(lo <= len(w) <= hi for w in words) < n:
            word = "".join(rng.choice("abcdefg") for _ in range(rng.randint(lo, hi)))
            words.add(word[:2] + " " + word[3:] if len(word) > 3 and rng.random() < 0.3 else word)
    lines = [f"{w}\t{w.replace(' ', '')[::-1].upper()}" for w in sorted(words)]
    return "\n".join(lines + [f"{w}\tX" for w in sorted(words)[:5]]) + "\n"


def _generate(tmp_path, text: bytes | str | None):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **TINY)
    set_params(tmp_path, data=FILE)
    pairs = tmp_path / "pairs.tsv"
    if text is not None:
        pairs.write_bytes(text.encode() if isinstance(text, str) else text)
    args = [*stage_args("generate", tmp_path / "params.yaml", tmp_path / "gen", tmp_path), "--pairs", str(pairs)]
    return CliRunner().invoke(load_stage("generate"), args), pairs


def test_sides_are_read_by_characters_or_by_spaces():
    assert tokenize("ab c", "chars") == ["a", "b", SPACE, "c"]
    assert tokenize(" new  york ", "spaces") == ["new", "york"]
    assert tokenize(" Pipeline\n", "letters") == list("pipeline")
    assert untokenize("n e w ▁ y o r k", "chars") == "new york"
    assert untokenize("N UW1", "spaces") == "N UW1"


def test_a_file_is_split_with_every_source_in_one_split(tmp_path):
    result, _ = _generate(tmp_path, _pairs())
    assert result.exit_code == 0, result.output
    counts = json.loads((tmp_path / "gen" / "metrics.json").read_text())
    assert counts["file_pairs"] == 435 and counts["duplicate_pairs"] == 0
    assert counts["sources_train"] == 256 and counts["sources_test_long"] == 16
    assert all(counts[f"overlap_{split}"] == 0 for split in ("val", "test", "test_long"))
    import pandas as pd

    train = pd.read_parquet(tmp_path / "gen" / "data" / "train.parquet")
    assert train["src"].str.contains(SPACE).any() and not train["tgt"].str.contains(SPACE).any()
    (tmp_path / "again").mkdir()
    assert _generate(tmp_path / "again", _pairs())[0].exit_code == 0  # the same file and seed: the same bytes
    for split in ("train", "test_long"):
        path = f"gen/data/{split}.parquet"
        assert (tmp_path / "again" / path).read_bytes() == (tmp_path / path).read_bytes()


BAD = {
    "no tab": (b"ab\tBA\nabc CBA\n", "pairs.tsv:2: no tab between source and target"),
    "two tabs": (b"ab\tBA\tX\n", "pairs.tsv:1: 2 tabs, expected one"),
    "empty source": (b"ab\tBA\n\tBA\n", "pairs.tsv:2: empty source"),
    "empty target": (b"ab\t\n", "pairs.tsv:1: empty target"),
    "source too long": (b"abcdefghij\tX\n", "pairs.tsv:1: a source of 10 tokens, over export.max_src_len (8)"),
    "target too long": (b"ab\tABCDEFGHI\n", "pairs.tsv:1: a target of 9 tokens; export.max_tgt_len (9) must exceed"),
    "not UTF-8": (b"ab\tBA\r\nab\xff\tBA\n", "pairs.tsv:2: not UTF-8 (byte 0xff at column 3)"),
    "too few pairs": (b"ab\tBA\nabc\tCBA\n", "data.n_train: 320 sources asked for (n_train + n_val + n_test)"),
    "no file": (None, "pairs.tsv: no such file; put your tab-separated pairs there and `dvc add` it"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_file_is_one_line_naming_the_line_and_nothing_is_written(tmp_path, case):
    text, message = BAD[case]
    result, pairs = _generate(tmp_path, text)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert str(pairs) in result.output
    assert not (tmp_path / "gen").exists()
    # The check stage reads the file the same way: dvc repro stops there, before DVC deletes generate's outputs.
    marker = tmp_path / "check.txt"
    args = ["--params", str(tmp_path / "params.yaml"), "--pairs", str(pairs), "--out", str(marker)]
    checked = CliRunner().invoke(load_stage("check"), args)
    assert (checked.exit_code, checked.output) == (1, result.output) and not marker.exists()


@pytest.mark.slow
def test_from_a_file_of_pairs_to_a_served_model(tmp_path):
    """The README's four commands, in a git + DVC copy of the project on the tiny profile."""
    repo = tiny_repo(tmp_path, run_pipeline=False)
    (repo / "pairs" / "pairs.tsv").write_text(_pairs())
    run(["dvc", "add", "pairs/pairs.tsv"], repo)
    assert (repo / "pairs" / "pairs.tsv.dvc").is_file() and "/pairs.tsv" in (repo / "pairs" / ".gitignore").read_text()
    run(["seq2seq", "apply-profile", "--params", "params.yaml", "profiles/file.yaml"], repo)
    set_params(repo, **TINY)  # the profile's task and tokens, the tests' sizes
    run(["dvc", "repro"], repo)
    assert json.loads((repo / "metrics" / "data.json").read_text())["file_pairs"] == 435
    # A source with a space, as a user types it; the target back as text, its characters joined.
    out = run(["seq2seq", "predict", "--model", "models/export"], repo, stdin="ab cd\nbag\n")
    lines = out.splitlines()
    assert len(lines) == 2 and any(lines) and all(set(line) <= set("ABCDEFGX") for line in lines), out
    config = json.loads((repo / "models" / "export" / "export.json").read_text())
    assert (config["source_tokens"], config["target_tokens"]) == ("chars", "chars")
    # A new version of the file: DVC sees it, and reruns the pipeline from generate.
    (repo / "pairs" / "pairs.tsv").write_text(_pairs(seed=1))
    assert "generate" in run(["dvc", "status"], repo)
    # A malformed one stops dvc repro at the check stage, every output as it was.
    (repo / "pairs" / "pairs.tsv").write_text("ab\tBA\nabc CBA\n")
    before = {p: p.read_bytes() for folder in ("data", "models") for p in (repo / folder).rglob("*") if p.is_file()}
    assert "pairs.tsv:2: no tab between source and target" in run(["dvc", "repro"], repo, expect=255)
    assert {
        p: p.read_bytes() for folder in ("data", "models") for p in (repo / folder).rglob("*") if p.is_file()
    } == before
