"""Run reports: ``report.md`` beside a self-contained ``report.html`` (figures embedded) that can be mailed.

The same writer serves every model (low-resolution ConvNeXt, patch-based, H&E) and the quantifier: it
takes a metrics dict from :mod:`her2score.report.metrics` (one evaluation or a cross-validation),
figures, extra tables and notes (skipped slides, warnings).
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from her2score import __version__
from her2score.io import write_text

METRIC_NAMES = {
    "auc_macro": "AUC (macro, one-vs-rest)",
    "f1_macro": "F1 (macro)",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "kappa_qw": "Quadratic-weighted kappa",
}

_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1100px;
       margin: 2em auto; padding: 0 1.2em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4e79a7; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #2b4f7a; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: right; }
th { background: #f0f3f7; }
td:first-child, th:first-child { text-align: left; }
.meta { color: #666; font-size: .9em; }
.notes li { margin: .2em 0; }
.warnings { background: #fff4e5; border: 2px solid #e8a33d; padding: .2em 1em; margin: 1em 0; }
.warnings h2 { color: #9a5b00; margin-top: .4em; }
figure { display: inline-block; max-width: 100%; margin: .5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
.missing { color: #b00020; }
"""


def write_report(
    out_dir: str | Path,
    title: str,
    metrics: dict[str, Any] | None = None,
    figures: Sequence[tuple[str, str | Path]] = (),
    tables: dict[str, pd.DataFrame] | None = None,
    notes: list[str] | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/report.html`` atomically; returns the HTML path.

    ``warnings`` (e.g. "the model learned nothing") stand at the top, above every table.

    ``metrics`` is a :func:`~her2score.report.metrics.classification_metrics` or
    :func:`~her2score.report.metrics.pool_folds` result; it gives the metric table with 95% CIs, the
    per-class table and the confusion matrix (and per-fold results for a cross-validation); a table in
    ``tables`` with the title of one of these sections replaces it. ``figures``
    are ``(caption, path)`` pairs: linked from the Markdown, embedded as base64 in the HTML. A missing
    figure is listed as missing rather than failing the report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = _sections(metrics, tables or {})
    all_notes = list(notes or [])
    if metrics is not None:
        pooled = metrics.get("pooled", metrics)
        all_notes += [n for n in pooled.get("notes", []) if n not in all_notes]
    figures = [(str(caption), Path(path)) for caption, path in figures]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"her2score {__version__} · {stamp}"
    if metrics is not None:
        pooled = metrics.get("pooled", metrics)
        meta += f" · {pooled['n']} cases · classes: {', '.join(pooled['classes'])}"
        if "n_folds" in metrics:
            meta += f" · {metrics['n_folds']}-fold cross-validation (pooled out-of-fold predictions)"
    alerts = list(warnings or [])
    write_text(out_dir / "report.md", _markdown(title, meta, sections, figures, all_notes, out_dir, alerts))
    return write_text(out_dir / "report.html", _html(title, meta, sections, figures, all_notes, alerts))


def _sections(
    metrics: dict[str, Any] | None, tables: dict[str, pd.DataFrame]
) -> list[tuple[str, pd.DataFrame]]:
    """The tables of the report in order: metrics, per class, confusion, folds, then the caller's."""
    from her2score.report.metrics import metrics_table, per_class_table

    sections: list[tuple[str, pd.DataFrame]] = []
    if metrics is not None:
        pooled = metrics.get("pooled", metrics)
        headline = metrics_table(metrics)
        level = round(100 * float(pooled.get("ci_level", 0.95)))
        shown = pd.DataFrame({"Metric": [METRIC_NAMES.get(m, m) for m in headline["metric"]]})
        shown["Value"] = headline["value"].map(_number)
        shown[f"{level}% CI"] = [
            _interval(low, high) for low, high in zip(headline["ci_low"], headline["ci_high"], strict=True)
        ]
        if "fold_mean" in headline.columns:
            shown["Per-fold mean ± sd"] = [
                f"{_number(m)} ± {_number(s)}"
                for m, s in zip(headline["fold_mean"], headline["fold_sd"], strict=True)
            ]
        sections.append(("Metrics", shown))
        per_class = per_class_table(metrics)
        shown_class = pd.DataFrame({"Class": per_class["class"]})
        for column in ("precision", "recall", "f1"):
            shown_class[column.capitalize() if column != "f1" else "F1"] = per_class[column].map(_number)
        shown_class["Support"] = per_class["support"].astype(int).astype(str)
        shown_class["AUC (one-vs-rest)"] = per_class["auc"].map(_number)
        if "auc_ci_low" in per_class.columns:
            shown_class[f"AUC {level}% CI"] = [
                _interval(low, high)
                for low, high in zip(per_class["auc_ci_low"], per_class["auc_ci_high"], strict=True)
            ]
        sections.append(("Per class", shown_class))
        classes = pooled["classes"]
        confusion = pd.DataFrame(pooled["confusion"], columns=[f"pred {c}" for c in classes])
        confusion.insert(0, "true \\ predicted", classes)
        sections.append(("Confusion matrix (rows = truth)", confusion.astype(str)))
        if "folds" in metrics:
            rows = []
            for fold, fold_metrics in metrics["folds"].items():
                row = {"Fold": str(fold), "n": str(fold_metrics["n"])}
                for name, label in METRIC_NAMES.items():
                    if fold_metrics.get(name) is not None:
                        row[label] = _number(fold_metrics[name])
                rows.append(row)
            sections.append(("Per fold", pd.DataFrame(rows)))
    # Callers' tables (e.g. per site from group_table) get the same readable metric names; one titled
    # like a built-in section (say "Per class") takes that section's place instead of repeating it.
    for name, frame in tables.items():
        entry = (str(name), frame.rename(columns=METRIC_NAMES))
        titles = [title for title, _ in sections]
        if entry[0] in titles:
            sections[titles.index(entry[0])] = entry
        else:
            sections.append(entry)
    return sections


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _interval(low: Any, high: Any) -> str:
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return "–"
    return f"{_number(float(low))} – {_number(float(high))}"


def _cell(value: Any) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    def clean(text: Any) -> str:
        return _cell(text).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(clean(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(clean(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _markdown(
    title: str,
    meta: str,
    sections: list[tuple[str, pd.DataFrame]],
    figures: list[tuple[str, Path]],
    notes: list[str],
    out_dir: Path,
    warnings: Sequence[str] = (),
) -> str:
    parts = [f"# {title}", "", f"_{meta}_", ""]
    if warnings:
        parts += ["## ⚠ Warnings", "", *[f"- **{w}**" for w in warnings], ""]
    for name, frame in sections:
        parts += [f"## {name}", "", _markdown_table(frame), ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, path in figures:
            if path.is_file():
                link = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
                parts += [f"![{caption}]({link})", "", f"*{caption}*", ""]
            else:
                parts += [f"- {caption}: figure missing ({path})", ""]
    if notes:
        parts += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(caption: str, path: Path) -> str:
    kind = _IMAGE_TYPES.get(path.suffix.lower())
    if not path.is_file() or kind is None:
        reason = "missing" if not path.is_file() else "not an image type that can be embedded"
        return f'<p class="missing">{html.escape(caption)}: figure {reason} ({html.escape(str(path))})</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:{kind};base64,{data}" alt="{html.escape(caption, quote=True)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _html(
    title: str,
    meta: str,
    sections: list[tuple[str, pd.DataFrame]],
    figures: list[tuple[str, Path]],
    notes: list[str],
    warnings: Sequence[str] = (),
) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{html.escape(meta)}</p>']
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        body += ['<div class="warnings"><h2>⚠ Warnings</h2>', f"<ul>{items}</ul></div>"]
    for name, frame in sections:
        body += [f"<h2>{html.escape(name)}</h2>", _html_table(frame)]
    if figures:
        body += ["<h2>Figures</h2>", "<div>", *[_html_figure(c, p) for c, p in figures], "</div>"]
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        body += ["<h2>Notes</h2>", f'<ul class="notes">{items}</ul>']
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
