"""Grad-CAM on the last convolutional stage: where in the low-resolution slide the class evidence lies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def grad_cam(model: Any, x: Any, class_index: int | None = None) -> tuple[np.ndarray, int]:
    """Grad-CAM map (h, w in feature cells, 0..1) for one input ``x`` (1, 3, H, W) already normalised.

    The model must expose ``features(x)`` (last conv stage, B x C x h x w) and ``head(features)``.
    Returns the map and the class it explains (the predicted one unless ``class_index`` is given).
    """
    import torch

    model.eval()
    with torch.enable_grad():
        feats = model.features(x)
        feats.retain_grad()
        logits = model.head(feats)
        if class_index is None:  # the model's prediction (with a stain head, not the CNN's alone)
            with torch.no_grad():
                class_index = int(model(x).argmax(1)[0])
        target = int(class_index)
        model.zero_grad(set_to_none=True)
        logits[0, target].backward()
    weights = feats.grad[0].mean(dim=(1, 2))  # C
    cam = torch.relu((weights[:, None, None] * feats[0]).sum(0)).detach().float().cpu().numpy()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam), target


def save_gradcam(model: Any, rgb: np.ndarray, x: Any, path: str | Path) -> tuple[Path, int]:
    """Save ``rgb`` (the low-resolution slide image) beside its Grad-CAM overlay for the predicted class.

    Returns the PNG path and the class index explained.
    """
    from her2score.io import write_png
    from her2score.report.heatmap import overlay_heatmap

    heat, target = grad_cam(model, x)
    tissue = rgb.astype(np.int16).min(axis=-1) < 235  # colour only over tissue, not glass/padding
    overlay = overlay_heatmap(rgb, heat, alpha=0.45, mask=tissue if tissue.any() else None)
    return write_png(path, np.concatenate([rgb, overlay], axis=1)), target
