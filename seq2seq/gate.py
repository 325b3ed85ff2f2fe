"""The quality gate: the workspace's evaluation metrics against a baseline's, with tolerances from params.yaml.

A retrained model fails the gate when test exact match (or BLEU) drops by more than its tolerance, or when any
baseline metric is missing or not finite in the workspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from seq2seq.config import require


@dataclass(frozen=True)
class GateConfig:
    """The `gate` section of params.yaml: how far a retrained model may fall behind the baseline."""

    max_exact_match_drop: float  # on test exact match
    max_bleu_drop: float  # on test BLEU

    def __post_init__(self) -> None:
        for name in ("max_exact_match_drop", "max_bleu_drop"):
            require(0 <= getattr(self, name) <= 1, name, f"must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Check:
    metric: str
    baseline: float | None
    current: float | None
    allowed_drop: float | None  # None: only presence and finiteness are checked
    ok: bool
    note: str


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"test": {"exact_match": 1}} -> {"test.exact_match": 1}, the keys `dvc metrics` shows."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(current: dict[str, Any], baseline: dict[str, Any] | None, cfg: GateConfig) -> list[Check]:
    """One Check per metric. With no baseline (a first run), only presence and finiteness are checked."""
    now, before = flatten(current), flatten(baseline or {})
    tolerances = {"test.exact_match": cfg.max_exact_match_drop, "test.bleu": cfg.max_bleu_drop}
    checks = []
    for metric in sorted(set(before) | set(tolerances) | set(now)):
        old, new, allowed = before.get(metric), now.get(metric), tolerances.get(metric)
        if new is None:
            checks.append(Check(metric, old, None, allowed, False, "missing"))
        elif not _finite(new):
            checks.append(Check(metric, old, new, allowed, False, "not finite"))
        elif allowed is not None and _finite(old) and old - new > allowed + 1e-12:
            checks.append(Check(metric, old, new, allowed, False, f"dropped by {old - new:.4g} > {allowed:g}"))
        else:
            checks.append(Check(metric, old, new, allowed, True, "ok"))
    return checks


def table(checks: list[Check]) -> str:
    """A markdown table, readable in a terminal, a job summary and a pull-request comment."""

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = ["| metric | baseline | current | change | allowed drop | result |", "|---|---|---|---|---|---|"]
    for c in checks:
        change = c.current - c.baseline if _finite(c.current) and _finite(c.baseline) else None
        verdict = "ok" if c.ok else f"**FAIL**: {c.note}"
        rows.append(
            f"| {c.metric} | {fmt(c.baseline)} | {fmt(c.current)} | {fmt(change)} | {fmt(c.allowed_drop)} | {verdict} |"
        )
    return "\n".join(rows)
