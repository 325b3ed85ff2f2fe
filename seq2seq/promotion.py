"""The rule that decides whether a candidate model replaces the registry's champion, and the step that weighs a
run against the champion and registers it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KEY_METRIC = "test/exact_match"  # higher is better
TIE_BREAKER = "test/loss"  # lower is better


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: dict[str, float], champion: dict[str, float] | None, same_test_data: bool = True) -> Decision:
    """Promote when the candidate beats the champion on test exact match; on a tie, on lower test loss.

    An exact tie on both keeps the champion: replacing it would gain nothing. Missing metrics are an error. Metrics
    of other test data (another task, other data params) do not compare: the champion stays.
    """
    _require(candidate, "candidate")
    if champion is None:
        return Decision(True, "there is no champion yet")
    if not same_test_data:
        return Decision(
            False,
            "its test data is not the champion's, so their metrics do not compare (to replace a "
            "champion of other data, move the alias by hand: MlflowClient().set_registered_model_alias)",
        )
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


class PromotionError(RuntimeError):
    """The candidate cannot be weighed or registered; the message says why and what to do."""


@dataclass(frozen=True)
class Candidacy:
    """A registered candidate, the champion it was weighed against, and the decision."""

    run_id: str
    version: str  # the candidate's registered version
    metrics: dict[str, float]
    champion: tuple[str, str] | None  # (version, run id) holding the alias, or None
    champion_metrics: dict[str, float] | None
    decision: Decision

    @property
    def is_champion(self) -> bool:
        return self.champion is not None and self.champion[0] == self.version

    @property
    def moves_alias(self) -> bool:
        """Whether the champion alias should move to the candidate."""
        return self.decision.promote and not self.is_champion

    @property
    def champion_label(self) -> str:
        return f"version {self.champion[0]} (run {self.champion[1]})" if self.champion else "none"

    def summary(self) -> str:
        """The key metrics of both side by side, and which versions they are."""
        lines = [f"{'metric':<18} {'candidate':>12} {'champion':>12}"]
        for key in (KEY_METRIC, TIE_BREAKER):
            old = f"{self.champion_metrics[key]:.6g}" if self.champion_metrics else "-"
            lines.append(f"{key:<18} {self.metrics[key]:>12.6g} {old:>12}")
        lines.append(f"candidate: version {self.version} (run {self.run_id}); champion: {self.champion_label}")
        return "\n".join(lines)

    def verdict(self, alias: str) -> str:
        """What promoting did, in one line; `alias` is the champion alias as `model@alias`."""
        if self.is_champion:
            return "the candidate already is the champion"
        if self.decision.promote:
            return f"promoted: {self.decision.reason}; {alias} -> version {self.version}"
        return f"not promoted: {self.decision.reason}; the champion stays {self.champion_label}"


def register_candidate(
    run_ref: Path | None = None, run_id: str | None = None, experiment: str | None = None
) -> Candidacy:
    """Read the metrics of the candidate run (named by exactly one of: a run reference file, a run id, a DVC
    experiment's name) and of the champion's run, decide, and register the candidate (whatever the decision:
    moving the alias is the caller's step); PromotionError on any failure."""
    # Imported here: `decide` alone needs nothing of the tracking package.
    from seq2seq import tracking
    from seq2seq.tracking import registry

    if sum(x is not None for x in (run_ref, run_id, experiment)) != 1:
        raise PromotionError("name the candidate once: --run-ref FILE, --run RUN_ID or --experiment NAME")
    named = run_ref or (f"experiment {experiment}" if experiment else "--run")
    try:
        if run_ref is not None:
            run_id = tracking.read_run_reference(run_ref)
        elif experiment is not None:
            run_id = registry.experiment_run(experiment)
        candidate = registry.run_metrics(run_id)
    except tracking.RunUnavailable as err:
        raise PromotionError(f"{named} names {err}; {err.remedy()}retrain and export it") from None
    except (tracking.TrackingError, LookupError) as err:
        raise PromotionError(str(err.args[0])) from None
    current = registry.champion()
    try:
        champion_metrics = registry.run_metrics(current[1]) if current else None
    except tracking.RunUnavailable as err:  # nothing to compare against: replacing it unseen would be a guess
        raise PromotionError(
            f"the champion, version {current[0]}, comes from {err}; {err.remedy()}move "
            f"the alias by hand (MlflowClient().set_registered_model_alias)"
        ) from None
    # Runs logged before the evaluate stage tagged its test data say nothing of it: they are taken as comparable.
    digests = {registry.run_tags_of(r).get(tracking.TEST_DATA_TAG) for r in (run_id, current[1])} if current else ()
    try:
        decision = decide(candidate, champion_metrics, same_test_data=None in digests or len(digests) < 2)
        version = registry.register(run_id)
    except (KeyError, LookupError) as err:  # metrics the evaluate stage did not log, a run with no model
        raise PromotionError(str(err.args[0])) from None
    return Candidacy(run_id, version, candidate, current, champion_metrics, decision)
