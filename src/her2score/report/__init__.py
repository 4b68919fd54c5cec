"""Metrics with confidence intervals, plots, heatmaps and run reports."""
