"""The rule that decides whether a candidate model replaces the registry's champion."""

from __future__ import annotations

from dataclasses import dataclass

KEY_METRIC = "test_exact_match"  # higher is better
TIE_BREAKER = "test_loss"  # lower is better


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: dict[str, float], champion: dict[str, float] | None) -> Decision:
    """Promote when the candidate beats the champion on test exact match; on a tie, on lower test loss.

    An exact tie on both keeps the champion: replacing it would gain nothing. Missing metrics are an error.
    """
    _require(candidate, "candidate")
    if champion is None:
        return Decision(True, "there is no champion yet")
    _require(champion, "champion")
    new, old = candidate[KEY_METRIC], champion[KEY_METRIC]
    if new != old:
        verb = "beats" if new > old else "does not beat"
        return Decision(new > old, f"{KEY_METRIC} {new:.4f} {verb} the champion's {old:.4f}")
    new_loss, old_loss = candidate[TIE_BREAKER], champion[TIE_BREAKER]
    if new_loss < old_loss:
        return Decision(True, f"{KEY_METRIC} ties at {new:.4f}; {TIE_BREAKER} {new_loss:.4g} < {old_loss:.4g}")
    return Decision(False, f"{KEY_METRIC} ties at {new:.4f}; {TIE_BREAKER} {new_loss:.4g} is not below {old_loss:.4g}")


def _require(metrics: dict[str, float], who: str) -> None:
    missing = [k for k in (KEY_METRIC, TIE_BREAKER) if k not in metrics]
    if missing:
        raise KeyError(f"the {who} run has no {', '.join(missing)}; run the evaluate stage first")
