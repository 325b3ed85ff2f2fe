"""The quality gate: the workspace's evaluation metrics against a baseline's, with tolerances from params.yaml.

A retrained model fails the gate when test exact match (or BLEU) drops, or test WER (g2p) rises, by more than its
tolerance, or when any
baseline metric is missing or not finite in the workspace. The baseline is a metrics file, or the workspace's
metrics file as committed at a git rev.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seq2seq.config import require


@dataclass(frozen=True)
class GateConfig:
    """The `gate` section of params.yaml: how far a retrained model may fall behind the baseline."""

    max_exact_match_drop: float  # on test exact match
    max_bleu_drop: float  # on test BLEU
    max_wer_rise: float  # on test WER (g2p; lower is better), where the metrics have it

    def __post_init__(self) -> None:
        for name in ("max_exact_match_drop", "max_bleu_drop", "max_wer_rise"):
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
    rises = {"test.wer": cfg.max_wer_rise}  # error rates: a rise fails; checked where the baseline has them
    checks = []
    for metric in sorted(set(before) | set(tolerances) | set(now)):
        old, new, allowed = before.get(metric), now.get(metric), tolerances.get(metric)
        if new is None:
            checks.append(Check(metric, old, None, allowed, False, "missing"))
        elif not _finite(new):
            checks.append(Check(metric, old, new, allowed, False, "not finite"))
        elif allowed is not None and _finite(old) and old - new > allowed + 1e-12:
            checks.append(Check(metric, old, new, allowed, False, f"dropped by {old - new:.4g} > {allowed:g}"))
        elif metric in rises and _finite(old) and new - old > rises[metric] + 1e-12:
            checks.append(Check(metric, old, new, rises[metric], False, f"rose by {new - old:.4g} > {rises[metric]:g}"))
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


class GateError(ValueError):
    """The metrics to compare cannot be read; the message names the file (and the git rev)."""


def check_revision(rev: str) -> str:
    """`rev`, refused if it starts with `-`: git and DVC would take it for an option (`git show REV:path` has no
    place for a `--` before it)."""
    if rev.startswith("-"):
        raise GateError(f"{rev!r} is not a git revision (it starts with '-')")
    return rev


def metrics_json(text: str, source: str) -> dict[str, Any]:
    """A metrics file's JSON object; GateError naming `source` if it is not one."""
    try:
        metrics = json.loads(text)
    except ValueError as err:
        raise GateError(f"{source}: not a metrics file ({err})") from None
    if not isinstance(metrics, dict):
        raise GateError(f"{source}: not a metrics file (a JSON {type(metrics).__name__})")
    return metrics


def baseline_metrics(rev: str, baseline_file: Path | None, metrics_path: Path) -> tuple[dict[str, Any] | None, str]:
    """The baseline's metrics (None when it has none yet: a first run) and a label saying where they came from:
    `baseline_file` if given, else `metrics_path` as committed at the git rev `rev`."""
    if baseline_file is not None:
        return metrics_json(baseline_file.read_text(), str(baseline_file)), str(baseline_file)
    check_revision(rev)
    # `REV:./path` is relative to the working directory; a bare `REV:/abs/path` would be taken as "not in REV" and
    # the gate would pass with no baseline.
    relative = os.path.relpath(metrics_path.resolve(), Path.cwd().resolve())
    shown = subprocess.run(["git", "show", f"{rev}:./{relative}"], capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        if "does not exist" in shown.stderr or "exists on disk, but not in" in shown.stderr:
            return None, f"{rev} (no {metrics_path} there yet)"
        raise GateError(f"cannot read {metrics_path} at {rev}: {shown.stderr.strip()}")
    return metrics_json(shown.stdout, f"{metrics_path} at {rev}"), f"{metrics_path} at {rev}"


def gate_checks(
    cfg: GateConfig, metrics_path: Path, rev: str, baseline_file: Path | None = None
) -> tuple[list[Check], str]:
    """The workspace's metrics (`metrics_path`) checked against the baseline's, and the baseline's label."""
    if not metrics_path.is_file():
        raise GateError(f"{metrics_path}: no such metrics file; run the pipeline first (dvc repro)")
    current = metrics_json(metrics_path.read_text(), str(metrics_path))
    baseline, label = baseline_metrics(rev, baseline_file, metrics_path)
    return check(current, baseline, cfg), label
