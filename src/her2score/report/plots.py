"""Evaluation figures: ROC curves, confusion matrices and training curves, saved atomically as PNG.

matplotlib is imported inside each function with the Agg backend, so importing this module is cheap
and plotting works on machines without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2score.io import save_figure

#: Colours for up to ten classes (colour-blind-safe Tableau order).
_CLASS_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    y_true: Sequence[Any] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """One-vs-rest ROC curve per class plus their macro average, AUCs in the legend; returns ``path``.

    A two-class task shows the positive class (``classes[1]``) only. Classes without a true case (or
    without a negative one) have no curve and are named in the legend as such.
    """
    from sklearn.metrics import roc_curve

    from her2score.report.metrics import check_probs, encode_labels

    classes = [str(c) for c in classes]
    y = encode_labels(y_true, classes)
    p, _ = check_probs(probs, len(classes), len(y))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1, label="chance")
    shown = [1] if len(classes) == 2 else range(len(classes))
    grid = np.linspace(0.0, 1.0, 201)
    interpolated, aucs = [], []
    for c in shown:
        positive = y == c
        colour = _CLASS_COLOURS[c % len(_CLASS_COLOURS)]
        if positive.all() or not positive.any():
            ax.plot([], [], color=colour, label=f"{classes[c]} (no curve: one-sided truth)")
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        auc = float(np.trapezoid(tpr, fpr))
        aucs.append(auc)
        interpolated.append(np.interp(grid, fpr, tpr))
        label = f"{classes[c]} vs rest  AUC {auc:.3f}" if len(classes) > 2 else f"{classes[c]}  AUC {auc:.3f}"
        ax.plot(fpr, tpr, color=colour, linewidth=1.6, label=label)
    if len(interpolated) > 1:
        mean_tpr = np.mean(interpolated, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(
            grid,
            mean_tpr,
            color="black",
            linestyle="--",
            linewidth=2,
            label=f"macro  AUC {np.mean(aucs):.3f}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title or f"ROC curves (n = {len(y)})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    return save_figure(path, fig)


def plot_confusion(
    confusion: Sequence[Sequence[float]] | np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str | None = None,
    normalize: bool = True,
) -> Path:
    """Confusion matrix (rows = truth, columns = prediction) with counts and row percentages.

    With ``normalize`` the colours show the row share (recall per true class), else the raw counts.
    """
    classes = [str(c) for c in classes]
    counts = np.asarray(confusion, dtype=float)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion must be {k}x{k} for classes {classes}, got shape {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(row_totals > 0, counts / row_totals, 0.0)
    shown = share if normalize else counts
    plt = _pyplot()
    size = 1.2 + 0.9 * k
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    vmax = 1.0 if normalize else max(float(counts.max()), 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true class" if normalize else "cases")
    for i in range(k):
        for j in range(k):
            percent = f"{100 * share[i, j]:.0f}%" if row_totals[i, 0] > 0 else "–"
            dark = shown[i, j] / vmax > 0.55
            ax.text(
                j,
                i,
                f"{counts[i, j]:.0f}\n{percent}",
                ha="center",
                va="center",
                fontsize=10 if k <= 5 else 8,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), [f"{c} (n={int(row_totals[i, 0])})" for i, c in enumerate(classes)])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or f"Confusion matrix (n = {int(counts.sum())})")
    return save_figure(path, fig)


def plot_training_curves(
    history: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Loss and metrics per epoch from a training history (one dict per epoch), plus the learning rate.

    Keys containing ``loss`` share the left panel; other numeric keys (e.g. ``val_f1_macro``,
    ``val_auc_macro``) the middle one; ``lr`` gets its own panel when present. ``epoch`` is the x axis
    (the position in the list when absent).
    """
    if not history:
        raise ValueError("training history is empty: nothing to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    keys: list[str] = []
    for row in history:
        for key, value in row.items():
            if key not in keys and key != "epoch" and _is_number(value):
                keys.append(key)
    loss_keys = [key for key in keys if "loss" in key]
    lr_keys = [key for key in keys if key in ("lr", "learning_rate")]
    skip = {"time", "seconds", "duration", "step"}
    metric_keys = [key for key in keys if key not in loss_keys and key not in lr_keys and key not in skip]
    panels = [(loss_keys, "loss"), (metric_keys, "metric"), (lr_keys, "learning rate")]
    panels = [(group, label) for group, label in panels if group]
    if not panels:
        raise ValueError("training history has no numeric values to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (group, label) in zip(axes[0], panels, strict=True):
        for key in group:
            xs = [e for e, row in zip(epochs, history, strict=True) if _is_number(row.get(key))]
            ys = [float(row[key]) for row in history if _is_number(row.get(key))]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if label == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(group) > 1 or label != "learning rate":
            ax.legend(fontsize=8)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return save_figure(path, fig)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and np.isfinite(value)
    )
