"""Predict slides with a saved model: class probabilities per slide, optional Grad-CAM heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from her2score.data.lowres import Failure


def expand_slides(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders expand to their (non-hidden) files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            out.append(p)
    return out


def predict_slides(
    model_path: str | Path,
    slides: list[str | Path],
    out_csv: str | Path,
    heatmap_dir: str | Path | None = None,
    device: str = "auto",
    mpp: float | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``out_csv``: ``slide, predicted, prob_<class>..., status``; unreadable slides get their cause."""
    from her2score.data.lowres import LowResParams
    from her2score.engine.checkpoint import load_model
    from her2score.engine.data import build_inputs
    from her2score.engine.evaluate import gradcam_figures, predict_probs, prediction_frame, resolve_device
    from her2score.io import write_csv

    dev = resolve_device(device)
    model, meta = load_model(model_path, dev)
    files = expand_slides(slides)
    params = LowResParams(meta["mpp"], meta["input_size"], meta.get("margin", 0.02))
    inputs = build_inputs(meta["input_kind"], files, params, cache_dir, [mpp] * len(files), workers, quiet)
    names = [str(files[i]) for i in inputs.positions]
    probs = predict_probs(model, inputs.images, meta, dev)
    frame = prediction_frame(names, probs, meta["classes"])
    frame["status"] = [stain_status(inputs.images[i]) for i in range(len(names))]
    if inputs.failures:
        failed = pd.DataFrame({"slide": [f.slide for f in inputs.failures]})
        failed["status"] = [f"skipped: {f.cause}" for f in inputs.failures]
        frame = pd.concat([frame, failed], ignore_index=True)
    order = {str(f): i for i, f in enumerate(files)}
    frame = frame.sort_values("slide", key=lambda s: s.map(order)).reset_index(drop=True)
    write_csv(out_csv, frame, float_format="%.6f")
    if heatmap_dir is not None and len(names):
        gradcam_figures(model, inputs.images, names, meta, dev, heatmap_dir)
    return frame, inputs.failures


def stain_status(image: Any) -> str:
    """``ok``, or a warning when a (3, H, W) uint8 input looks like H&E: an IHC model's answer is void."""
    import numpy as np

    from her2score.slide.tissue import tissue_mask
    from her2score.stain.quantify import looks_like_he

    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    mask = tissue_mask(rgb)
    if mask.any() and looks_like_he(rgb, mask):
        return "warning: looks like H&E, not IHC; this prediction is meaningless"
    return "ok"


def describe(meta: dict[str, Any]) -> str:
    """One line about a model: name, backbone, task, classes, resolution."""
    return (
        f"{meta['model']} ({meta.get('backbone')}) · {meta['task']}: {', '.join(meta['classes'])} · "
        f"{meta['mpp']} µm/px into {meta['input_size']} px"
    )
