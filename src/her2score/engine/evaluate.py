"""Evaluation shared by every model: probabilities, metrics with CIs, per-site breakdown, plots, report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.data.lowres import Failure


def write_evaluation(
    out_dir: str | Path,
    predictions: pd.DataFrame,
    classes: list[str],
    title: str,
    ordinal: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    failures: list[Failure] | None = None,
    figures: list[tuple[str, Path]] | None = None,
    notes: list[str] | None = None,
    folds: bool = False,
    warnings: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics (with bootstrap CIs), per-site metrics, ROC and confusion plots and a report in ``out_dir``.

    ``predictions`` has ``slide, y_true, prob_<class>...`` (and ``site``; ``fold`` when ``folds``), and
    for each baseline scored on the same slides ``base_<name>:<class>`` columns (see
    :func:`add_baselines`): their metrics go beside the model's, in ``metrics["baselines"]`` and a table.
    ``warnings`` stand at the top of the report; ``extra`` entries are added to ``metrics.json`` (and
    the returned metrics).
    """
    from her2score.io import write_csv, write_json
    from her2score.report.document import write_report
    from her2score.report.metrics import (
        classification_metrics,
        group_metrics,
        group_table,
        per_class_table,
        pool_folds,
    )
    from her2score.report.plots import plot_confusion, plot_roc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob_cols = [f"prob_{c}" for c in classes]
    probs = predictions[prob_cols].to_numpy(float)
    y = predictions["y_true"].astype(str).to_numpy()
    if folds:
        frames = [f for _, f in predictions.groupby("fold", sort=True)]
        metrics = pool_folds(frames, classes, n_boot=n_boot, seed=seed, ordinal=ordinal)
        pooled = metrics["pooled"]
    else:
        metrics = classification_metrics(y, probs, classes, n_boot=n_boot, seed=seed, ordinal=ordinal)
        pooled = metrics
    tables: dict[str, pd.DataFrame] = {"Per class": per_class_table(pooled)}
    if "site" in predictions and predictions["site"].nunique() > 1:
        by_site = group_metrics(y, probs, predictions["site"].astype(str), classes, n_boot=0, ordinal=ordinal)
        metrics["by_site"] = by_site
        tables["Per site"] = group_table(by_site)
    alerts = list(warnings or [])
    baselines = _baseline_metrics(predictions, classes, n_boot, seed, ordinal)
    if baselines:
        metrics["baselines"] = baselines
        tables["Model and baselines on the same slides"] = _baseline_table(pooled, baselines)
        alerts += _baseline_warnings(pooled, baselines)
    if alerts:
        metrics["warnings"] = alerts
    metrics.update(extra or {})
    if isinstance(metrics.get("excluding_flagged"), dict) and metrics["excluding_flagged"].get("n"):
        from her2score.report.metrics import metrics_table

        tables["Without the slides flagged for their stain"] = metrics_table(metrics["excluding_flagged"])
    write_json(out / "metrics.json", metrics)
    write_csv(out / "predictions.csv", predictions)
    roc = plot_roc(y, probs, classes, out / "roc.png", title=f"{title}: ROC")
    confusion = plot_confusion(
        pooled["confusion"], classes, out / "confusion.png", title=f"{title}: confusion"
    )
    all_notes = list(notes or [])
    if failures:
        write_csv(out / "skipped_slides.csv", pd.DataFrame([f.__dict__ for f in failures]))
        all_notes.append(f"{len(failures)} slide(s) skipped (see skipped_slides.csv):")
        all_notes += [f"skipped {Path(f.slide).name}: {f.cause}" for f in failures]
    write_report(
        out,
        title,
        metrics=metrics,
        figures=[("ROC curves (one-vs-rest)", roc), ("Confusion matrix", confusion), *(figures or [])],
        tables=tables,
        notes=all_notes,
        warnings=alerts,
    )
    return metrics


BASELINE_PREFIX = "base_"
#: The model is flagged when a baseline's macro AUC beats its own by more than this.
BASELINE_MARGIN = 0.02


def add_baselines(frame: pd.DataFrame, baselines: dict[str, Any], classes: list[str]) -> pd.DataFrame:
    """``frame`` with each baseline's probabilities (rows aligned) as ``base_<name>:<class>`` columns."""
    for name, probs in baselines.items():
        for k, c in enumerate(classes):
            frame[f"{BASELINE_PREFIX}{name}:{c}"] = probs[:, k]
    return frame


def _baseline_metrics(
    predictions: pd.DataFrame, classes: list[str], n_boot: int, seed: int, ordinal: bool
) -> dict[str, Any]:
    from her2score.report.metrics import classification_metrics

    names = sorted(
        {c[len(BASELINE_PREFIX) :].rsplit(":", 1)[0] for c in predictions if c.startswith(BASELINE_PREFIX)}
    )
    y = predictions["y_true"].astype(str).to_numpy()
    out = {}
    for name in names:
        probs = predictions[[f"{BASELINE_PREFIX}{name}:{c}" for c in classes]].to_numpy(float)
        out[name] = classification_metrics(y, probs, classes, n_boot=n_boot, seed=seed, ordinal=ordinal)
    return out


def _baseline_table(pooled: dict[str, Any], baselines: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, m in [("this model", pooled), *baselines.items()]:
        low, high = m.get("ci", {}).get("auc_macro", [None, None])
        auc = m.get("auc_macro")
        shown = (
            "–" if auc is None else f"{auc:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
        )
        rows.append(
            {"model": name, "macro AUC [95% CI]": shown, "macro F1": m.get("f1_macro"),
             "accuracy": m.get("accuracy"), "quadratic κ": m.get("kappa_qw")}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _baseline_warnings(pooled: dict[str, Any], baselines: dict[str, Any]) -> list[str]:
    out = []
    own = pooled.get("auc_macro")
    for name, m in baselines.items():
        theirs = m.get("auc_macro")
        if own is not None and theirs is not None and theirs > own + BASELINE_MARGIN:
            out.append(
                f"the {name} baseline scores these slides better than the model "
                f"(macro AUC {theirs:.3f} vs {own:.3f}): the model adds nothing here"
            )
    return out


def evaluate_model(
    model_path: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    heatmaps: int = 6,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[Failure]]:
    """Score a manifest's slides with a saved model and write metrics, plots and a report.

    Slides that cannot be read are skipped and listed (``skipped_slides.csv`` and the report). Each
    slide's picture is checked for the stain the model reads (:func:`~her2score.engine.predict.stain_status`):
    ``predictions.csv`` gets a ``status`` column, and when some slides are flagged (an H&E slide in an
    IHC manifest) ``metrics.json`` also holds ``excluding_flagged``, the metrics without them. A manifest
    whose labels are all one class is warned about (``log``, default stderr, and the report). The run
    holds ``out_dir`` (:func:`her2score.io.output_lock`).
    """
    from her2score.data.manifest import load_manifest
    from her2score.engine.predict import stain_status
    from her2score.engine.predictor import Predictor, prediction_frame
    from her2score.io import output_lock
    from her2score.paths import cache_dir as default_cache

    log = log or _to_stderr
    out = Path(out_dir)
    with output_lock(out):
        predictor, meta = Predictor.from_checkpoint(model_path, device)
        cohort = load_manifest(manifest, meta["task"], meta.get("equivocal", "ish"), check_files=False)
        prepared = predictor.kind.prepare(
            cohort.frame.to_dict("records"), cache_dir or default_cache("lowres"), workers, quiet
        )
        rows = cohort.frame.iloc[prepared.positions]
        probs = predictor.predict(prepared)
        frame = prediction_frame(
            list(rows["slide"]),
            probs,
            meta["classes"],
            {
                "patient": list(rows["patient"]),
                "site": list(rows["site"]),
                "y_true": list(rows["label_name"]),
            },
        )
        baselines = predictor.predict_baselines(prepared)
        if meta.get("class_counts"):
            from her2score.engine.baselines import CLASS_PRIOR, class_prior_probs

            counts = np.repeat(np.arange(len(meta["classes"])), meta["class_counts"])
            baselines[CLASS_PRIOR] = class_prior_probs(counts, len(frame), len(meta["classes"]))
        frame = add_baselines(frame, baselines, meta["classes"])
        expected = meta.get("input_stain", "ihc")
        frame["status"] = [
            stain_status(predictor.kind.picture(prepared, i), expected) for i in range(len(frame))
        ]
        notes = [f"model {Path(model_path).name}: {describe(meta)}"]
        one_class = _one_class_warning(frame, Path(manifest).name)
        if one_class:
            log(one_class)
            notes.append(one_class)
        flagged = frame["status"] != "ok"
        excluding = None
        if flagged.any():
            names = ", ".join(Path(s).name for s in frame.loc[flagged, "slide"])
            warning = (
                f"warning: {int(flagged.sum())} slide(s) do not look like the stain the model reads "
                f"({expected}): {names}; metrics are reported with and without them (excluding_flagged)"
            )
            log(warning)
            notes.append(warning)
            excluding = _metrics_without(frame[~flagged], meta, n_boot, seed)
        figures = predictor.heatmaps(
            prepared, list(rows["slide"]), out / "heatmaps", heatmaps, meta["classes"]
        )
        metrics = write_evaluation(
            out,
            frame,
            meta["classes"],
            f"{meta['model']} on {Path(manifest).name} ({meta['task']})",
            ordinal=meta.get("ordinal", True),
            n_boot=n_boot,
            seed=seed,
            failures=prepared.failures,
            figures=figures,
            notes=notes,
            extra=None
            if excluding is None
            else {"n_flagged": int(flagged.sum()), "excluding_flagged": excluding},
        )
    return metrics, prepared.failures


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _one_class_warning(frame: pd.DataFrame, name: str) -> str:
    present = sorted(set(frame["y_true"].astype(str)))
    if len(present) != 1:
        return ""
    return (
        f"warning: every readable slide of {name} is {present[0]}: one class, so AUC and per-class "
        "metrics are undefined and accuracy says nothing about the other classes"
    )


def _metrics_without(kept: pd.DataFrame, meta: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """The metrics over the slides that were not flagged (or why there are none)."""
    from her2score.report.metrics import classification_metrics

    if not len(kept):
        return {"n": 0, "note": "every slide was flagged"}
    classes = meta["classes"]
    probs = kept[[f"prob_{c}" for c in classes]].to_numpy(float)
    y = kept["y_true"].astype(str).to_numpy()
    return classification_metrics(
        y, probs, classes, n_boot=n_boot, seed=seed, ordinal=meta.get("ordinal", True)
    )


def describe(meta: dict[str, Any]) -> str:
    """One line about a model: name, backbone, task, classes, input."""
    data = meta.get("data", {})
    where = (
        f" · {data['mpp']} µm/px into {data['input_size']} px"
        if "mpp" in data and "input_size" in data
        else ""
    )
    backbone = f" ({meta['backbone']})" if meta.get("backbone") else ""
    return (
        f"{meta['model']}{backbone} · {meta['task']}: {', '.join(meta['classes'])} · "
        f"input {meta['input_kind']}{where}"
    )
