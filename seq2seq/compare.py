"""Comparing variants: a table of runs with only the params that differ and the key metrics, the links between
DVC experiments and MLflow runs, and an offline HTML report with PNG plots (no CDN, images inlined)."""

from __future__ import annotations

import base64
import html
import io
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from seq2seq.config import redact
from seq2seq.files import atomic_write
from seq2seq.promotion import TIE_BREAKER

KEY_METRICS = (
    "test/exact_match",
    "test_long/exact_match",
    "test/bleu",
    "test/loss",
    "test/wer",  # g2p runs: word and phoneme error rates
    "test/per",
    "summary/best_epoch",
)
FORMATS = ("table", "md", "csv", "json")


def lower_is_better(column: str) -> bool:
    """Losses, perplexities and error rates: their best is their lowest."""
    return column.endswith(("loss", "perplexity", "wer", "per"))


def variant_table(runs: pd.DataFrame, sort_by: str, ascending: bool | None = None) -> pd.DataFrame:
    """One row per run: run name and id, the params whose values differ between runs, the key metrics.

    `runs` is MLflow's search_runs frame (columns run_id, tags.mlflow.runName, params.*, metrics.*). Sorted by
    `sort_by`, best first unless `ascending` says otherwise (losses ascending, scores descending), ties broken by
    the lower test loss; a param whose values are all numbers sorts as numbers (MLflow keeps params as strings).
    """
    if runs.empty:
        return pd.DataFrame(columns=["run", "run_id"])
    names = runs["tags.mlflow.runName"] if "tags.mlflow.runName" in runs else pd.Series(None, index=runs.index)
    table = pd.DataFrame({"run": names.fillna(runs["run_id"]), "run_id": runs["run_id"]})  # unnamed: the id
    params = [c for c in runs.columns if c.startswith("params.")]
    differing = [c for c in params if runs[c].astype("string").nunique(dropna=False) > 1]
    for column in sorted(differing):
        table[column.removeprefix("params.")] = runs[column]
    for name in KEY_METRICS:
        if f"metrics.{name}" in runs:
            table[name] = runs[f"metrics.{name}"]
    if sort_by not in table:
        raise KeyError(f"cannot sort by {sort_by!r}: the table has {', '.join(table.columns)}")
    if ascending is None:
        ascending = lower_is_better(sort_by)
    if TIE_BREAKER in table and sort_by != TIE_BREAKER:  # ties: the lower test loss first, as promotion decides
        table = table.loc[table[TIE_BREAKER].sort_values(na_position="last", kind="stable").index]
    numbers = pd.to_numeric(table[sort_by], errors="coerce")
    key = numbers if numbers.notna().sum() == table[sort_by].notna().sum() else table[sort_by].astype("string")
    order = key.sort_values(ascending=ascending, na_position="last", kind="stable").index
    return table.loc[order].reset_index(drop=True)


def _markdown(table: pd.DataFrame) -> str:
    """pandas' markdown (tabulate), with a `|` in a run name escaped and a missing metric left blank."""
    cells = table.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    return cells.astype(object).where(cells.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    if fmt == "md":
        return _markdown(table)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


class DvcError(RuntimeError):
    """A dvc command failed; the message carries its error."""


def dvc_exp_links(run_ref_file: str) -> list[dict[str, str]]:
    """exp_links of `dvc exp show --json` in the working directory's repository. Not `dvc.api.exp_show`: its rows
    cut each experiment's commit to 7 characters, and the runs are tagged with the whole commit."""
    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        raise DvcError(f"dvc exp show failed: {shown.stderr.strip()}")
    return exp_links(json.loads(shown.stdout), run_ref_file)


def exp_links(exp_show: Any, run_ref_file: str) -> list[dict[str, str]]:
    """(run id, experiment name, experiment commit) for every DVC experiment in `dvc exp show --json` output
    whose metrics include the run reference file written by the train stage."""
    links = []

    def visit(entry: dict) -> None:
        data = entry.get("data") or {}
        ref = ((data.get("metrics") or {}).get(run_ref_file) or {}).get("data") or {}
        if ref.get("run_id") and entry.get("name") and entry.get("rev"):
            links.append({"run_id": ref["run_id"], "name": entry["name"], "rev": entry["rev"]})

    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                visit(rev)
    return links


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def curves_png(histories: dict[str, pd.DataFrame], metric: str) -> str:
    """Base64 PNG: one line per run, `metric` against step (epoch)."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    for name, history in histories.items():
        ax.plot(history["step"], history["value"], marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if metric.endswith("loss"):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} per epoch")
    fig.tight_layout()
    return _png(fig)


def scatter_png(table: pd.DataFrame, metric: str, param: str) -> str:
    """Base64 PNG: `metric` against `param`, one point per run (a numeric axis when the param is numeric)."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    x = pd.to_numeric(table[param], errors="coerce")
    numeric = x.notna().all()
    positions = x if numeric else pd.Series(pd.factorize(table[param].astype(str))[0])
    ax.scatter(positions, table[metric])
    for pos, value, name in zip(positions, table[metric], table["run"], strict=True):
        ax.annotate(str(name), (pos, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if numeric and x.gt(0).all() and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    if not numeric:
        labels = pd.factorize(table[param].astype(str))[1]
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {param}")
    fig.tight_layout()
    return _png(fig)


def html_report(table: pd.DataFrame, curves: str, scatter: str | None, title: str, notes: Iterable[str] = ()) -> str:
    """A self-contained page: the table and the plots inlined as PNG data URIs, no script, no CDN."""
    images = [("Validation loss per epoch", curves)] + ([("Metric against param", scatter)] if scatter else [])
    figures = "\n".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in images
    )
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    rows = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}figure{{display:inline-block;margin:1em}}</style>
</head><body><h1>{html.escape(title)}</h1><ul>{items}</ul>{rows}{figures}</body></html>
"""


def variants_page(
    table: pd.DataFrame, val_loss: dict[str, pd.DataFrame], metric: str, param: str | None, notes: Iterable[str]
) -> str:
    """The offline HTML report of a variant table: one validation-loss curve per run (`val_loss`: run id -> its
    history), and `metric` against `param` when both are set and in the table."""
    # One curve per run: runs may share a name (a run continuing another keeps it), so label those with their id.
    shared = table["run"].duplicated(keep=False)
    labels = [
        f"{name} ({rid[:8]})" if dup else name
        for name, rid, dup in zip(table["run"], table["run_id"], shared, strict=True)
    ]
    curves = curves_png(dict(zip(labels, (val_loss[rid] for rid in table["run_id"]), strict=True)), "val/loss")
    scatter = scatter_png(table, metric, param) if param and metric in table else None
    return html_report(table, curves, scatter, "Seq2Seq variants", notes)


def write_html(path: Path, table: pd.DataFrame, metric: str, param: str | None, sort_by: str) -> None:
    """variants_page of `table` at `path`, with each run's validation loss read from the store. `param` defaults to
    the first param that differs; KeyError if it is not a column of the table."""
    from seq2seq import tracking  # here: the table and its formats need nothing of the tracking package
    from seq2seq.tracking import registry

    params = [c for c in table.columns if c not in ("run", "run_id", *KEY_METRICS)]
    param = param or (params[0] if params else None)
    if param is not None and param not in table:
        raise KeyError(f"{param!r} is not a param that differs: {', '.join(params) or 'none'}")
    val_loss = registry.metric_histories(list(table["run_id"]), "val/loss")
    notes = [f"store: {redact(tracking.resolve_tracking_uri())}", f"{len(table)} runs, sorted by {sort_by}"]
    page = variants_page(table, val_loss, metric, param, notes)
    atomic_write(path, lambda tmp: tmp.write_text(page))


def offline_plots_template() -> str:
    """A page for `dvc plots show --html-template` that renders offline. DVC's own page loads Vega from a CDN, a
    blank page without the network, and DVC ships no offline one: this inlines Vega, Vega-Lite 5 and vega-embed as
    vl-convert bundles them (a PyPI wheel, nothing downloaded at run time); DVC fills `{plot_divs}`."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version="5.21")  # DVC writes Vega-Lite 5 specs
    head = f'<meta charset="utf-8">\n<title>DVC plots</title>\n<script>\n{bundle}\n</script>'
    return f"<!DOCTYPE html>\n<html>\n<head>\n{head}\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n"
