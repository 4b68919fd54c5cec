"""Manifests, tasks and splits, synthetic cohorts and datasets."""
