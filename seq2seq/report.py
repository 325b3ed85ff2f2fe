"""The retraining report: one markdown page (the gate's table, DVC's metrics and params diffs, the curves, the MLflow
run) for a CI job summary or a pull-request comment."""

from __future__ import annotations

import subprocess
from pathlib import Path

from seq2seq.config import redact
from seq2seq.files import atomic_write
from seq2seq.gate import Check, check_revision, table


def dvc_diff(kind: str, rev: str, baseline_file: Path | None = None) -> str:
    """`dvc metrics diff REV --md` (kind "metrics") or `dvc params diff REV --md`: DVC's markdown table, or its
    reason for having none. A baseline file is no rev to diff against: the text says so instead."""
    if baseline_file is not None:
        return f"(the baseline is {baseline_file}, not a git rev)"
    shown = subprocess.run(
        ["dvc", kind, "diff", check_revision(rev), "--md"], capture_output=True, text=True, check=False
    )
    return shown.stdout.strip() or shown.stderr.strip() or "no changes"


def draw_curves(history: Path, by_length: Path, out: Path) -> tuple[Path, Path]:
    """The loss curves (from the training history CSV) and exact match by source length (one CSV per split in
    `by_length`) as PNGs beside `out`, named after it; returns their paths."""
    import pandas as pd

    from seq2seq.plots import exact_match_by_length, loss_curves

    out.parent.mkdir(parents=True, exist_ok=True)
    loss_png, length_png = out.with_name(f"{out.stem}_loss.png"), out.with_name(f"{out.stem}_by_length.png")
    loss_curves(pd.read_csv(history).to_dict("records")).savefig(loss_png)
    exact_match_by_length({p.stem: pd.read_csv(p) for p in sorted(by_length.glob("*.csv"))}).savefig(length_png)
    return loss_png, length_png


def curve_tables(history: Path, by_length: Path) -> str:
    """The curves' figures as markdown tables: loss and exact match by epoch, exact match by source length."""
    import pandas as pd

    from seq2seq.plots import HISTORY_COLUMNS

    epochs = pd.read_csv(history)[list(HISTORY_COLUMNS)]
    splits = {p.stem: pd.read_csv(p).set_index("length")["exact_match"] for p in sorted(by_length.glob("*.csv"))}
    lengths = pd.concat(splits, axis=1).reset_index()
    lengths = lengths.astype(object).where(lengths.notna(), None)  # a length this split does not hold: `-`
    by_length = lengths.to_markdown(index=False, floatfmt=[".0f"] + [".3f"] * len(splits), missingval="-")
    by_epoch = epochs.to_markdown(index=False, floatfmt=".4g")
    return f"By epoch:\n\n{by_epoch}\n\nExact match by source length:\n\n{by_length}"


def markdown(
    checks: list[Check],
    label: str,
    *,
    rev: str,
    run_id: str,
    tags: dict[str, str],
    tracking_uri: str,
    metrics_diff: str,
    params_diff: str,
    curves: tuple[Path, Path],
    curve_tables: str = "",
) -> str:
    """The report's page. `label` names the baseline, `tags` are the MLflow run's, `curves` the PNGs of draw_curves
    (named: they sit beside the page, and a PR comment cannot show them), `curve_tables` the same figures as markdown
    tables, which render wherever the page is shown."""
    loss_png, length_png = curves
    experiment = tags.get("dvc_exp_name", "none: dvc repro in the workspace")
    verdict = "passed" if all(c.ok for c in checks) else "**failed**"
    return f"""# Retraining report

- Gate: {verdict} (baseline: {label})
- MLflow run: `{run_id}` in `{tracking_uri}`
- DVC experiment: {experiment}

## Gate
{table(checks)}

## Metrics diff (`dvc metrics diff {rev}`)
{metrics_diff}

## Params diff (`dvc params diff {rev}`)
{params_diff}

## Curves
{curve_tables}

PNG plots beside this report: `{loss_png.name}`, `{length_png.name}`.
"""


def write(
    checks: list[Check],
    label: str,
    *,
    out: Path,
    run_ref: Path,
    history: Path,
    by_length: Path,
    rev: str,
    baseline_file: Path | None,
) -> None:
    """The report at `out` (markdown), its curves beside it, on the run that `run_ref` names (its tags come from
    MLflow); TrackingError if the reference or the run cannot be read."""
    # Imported here: markdown() alone needs nothing of the tracking package.
    from seq2seq import tracking
    from seq2seq.tracking import registry

    run_id = tracking.read_run_reference(run_ref)
    page = markdown(
        checks,
        label,
        rev=rev,
        run_id=run_id,
        tags=registry.run_tags_of(run_id),
        tracking_uri=redact(tracking.resolve_tracking_uri()),  # CI posts the report: no credential in it
        metrics_diff=dvc_diff("metrics", rev, baseline_file),
        params_diff=dvc_diff("params", rev, baseline_file),
        curves=draw_curves(history, by_length, out),
        curve_tables=curve_tables(history, by_length),
    )
    atomic_write(out, lambda tmp: tmp.write_text(page))
