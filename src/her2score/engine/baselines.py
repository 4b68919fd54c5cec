"""Trivial baselines scored on the same slides as the model, so a report shows whether the model adds
anything: the class prior (predict the training class frequencies) and, for image inputs, the
stain-statistics model alone (a logistic regression on DAB and hematoxylin optical-density quantiles,
:mod:`her2score.models.nets.stain_stats`)."""

from __future__ import annotations

from typing import Any

import numpy as np

CLASS_PRIOR = "class prior"
STAIN_STATISTICS = "stain statistics alone"


def class_prior_probs(train_labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """The training class frequencies, for each of ``n`` slides."""
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    prior = counts / max(counts.sum(), 1.0)
    return np.tile(prior, (n, 1))


def baseline_probs(
    kind: Any,
    prepared: Any,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    stats: dict[str, Any],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """``{baseline name: probabilities (len(test), K)}`` fitted on ``train`` only."""
    import torch

    out = {CLASS_PRIOR: class_prior_probs(labels[train], len(test), num_classes)}
    images = kind.images(prepared)
    if images is not None and "mean" in stats:
        from her2score.models.nets.stain_stats import StainStatistics

        head = StainStatistics(num_classes)
        head.fit(images[train], labels[train], stats["mean"], stats["std"])
        batch = kind.batch(prepared, test, stats, torch.device("cpu"), inference=True)
        with torch.no_grad():
            out[STAIN_STATISTICS] = torch.softmax(head(batch["image"]), 1).numpy()
    return out
