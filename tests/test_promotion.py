"""`seq2seq promote`'s steps (seq2seq.promotion.register_candidate) with the MLflow registry stubbed; the rule
itself is tested in test_evaluation.py, the command end to end in test_pipeline.py."""

from __future__ import annotations

import pytest

from seq2seq import promotion, tracking
from seq2seq.tracking import registry


def test_a_candidate_is_weighed_against_the_champion_and_registered(tmp_path, monkeypatch):
    """`seq2seq promote`'s steps with the registry stubbed: the candidate is registered whatever the decision, the
    alias moves only when it wins and is not the champion already, and nothing is registered on an error."""
    ref = tmp_path / "run.json"
    ref.write_text('{"run_id": "new"}')
    metrics = {"new": {"test/exact_match": 0.9, "test/loss": 0.2}, "old": {"test/exact_match": 0.8, "test/loss": 0.1}}
    registered, tags = [], {"new": {}, "old": {}}
    monkeypatch.setattr(registry, "run_metrics", lambda run_id: metrics[run_id])
    monkeypatch.setattr(registry, "run_tags_of", lambda run_id: tags[run_id])
    monkeypatch.setattr(registry, "champion", lambda: ("1", "old"))
    monkeypatch.setattr(registry, "register", lambda run_id: registered.append(run_id) or "2")
    candidacy = promotion.register_candidate(ref)
    assert registered == ["new"] and candidacy.moves_alias and not candidacy.is_champion
    assert candidacy.summary().splitlines()[1:] == [
        "test/exact_match            0.9          0.8",
        "test/loss                   0.2          0.1",
        "candidate: version 2 (run new); champion: version 1 (run old)",
    ]
    assert candidacy.verdict("m@a") == "promoted: test/exact_match 0.9000 beats the champion's 0.8000; m@a -> version 2"
    # Better figures on another test set (another task, other data params) do not compare: the champion stays.
    tags.update(new={tracking.TEST_DATA_TAG: "a"}, old={tracking.TEST_DATA_TAG: "b"})
    candidacy = promotion.register_candidate(ref)
    assert registered == ["new", "new"] and not candidacy.moves_alias
    assert candidacy.verdict("m@a").startswith("not promoted: its test data is not the champion's, so their metrics")
    tags["old"] = {}  # a champion evaluated before the tag existed: taken as comparable, as before
    assert promotion.register_candidate(ref).moves_alias

    monkeypatch.setattr(registry, "champion", lambda: ("2", "new"))  # promoted before: registered as the same version
    candidacy = promotion.register_candidate(ref)
    assert candidacy.is_champion and not candidacy.moves_alias
    assert candidacy.verdict("m@a") == "the candidate already is the champion"

    monkeypatch.setattr(registry, "champion", lambda: None)
    metrics["new"] = {"test/exact_match": 0.1, "test/loss": 9.0}
    candidacy = promotion.register_candidate(ref)
    assert candidacy.moves_alias and candidacy.summary().splitlines()[1].endswith(" -")  # no champion's figures

    registered.clear()
    metrics["new"] = {"test/loss": 0.2}
    with pytest.raises(promotion.PromotionError, match="candidate run has no test/exact_match"):
        promotion.register_candidate(ref)

    def gone(run_id: str) -> dict:
        raise tracking.RunUnavailable(run_id, "sqlite:///x.db", missing=False)

    monkeypatch.setattr(registry, "champion", lambda: ("1", "old"))
    monkeypatch.setattr(registry, "run_metrics", lambda run_id: metrics[run_id] if run_id == "new" else gone(run_id))
    with pytest.raises(promotion.PromotionError, match=r"the champion, version 1, comes from run old, which was del"):
        promotion.register_candidate(ref)
    monkeypatch.setattr(registry, "run_metrics", gone)
    with pytest.raises(promotion.PromotionError, match=r"run.json names run new, which was deleted .*restore it"):
        promotion.register_candidate(ref)
    assert registered == []
