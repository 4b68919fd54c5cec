"""Metrics with confidence intervals, plots, heatmaps and run reports, shared by every model."""

from her2score.report.document import write_report
from her2score.report.heatmap import heatmap_figure, overlay_heatmap
from her2score.report.metrics import (
    classification_metrics,
    group_metrics,
    group_table,
    json_ready,
    metrics_table,
    per_class_table,
    pool_folds,
)
from her2score.report.plots import plot_confusion, plot_roc, plot_training_curves

__all__ = [
    "classification_metrics",
    "group_metrics",
    "group_table",
    "heatmap_figure",
    "json_ready",
    "metrics_table",
    "overlay_heatmap",
    "per_class_table",
    "plot_confusion",
    "plot_roc",
    "plot_training_curves",
    "pool_folds",
    "write_report",
]
