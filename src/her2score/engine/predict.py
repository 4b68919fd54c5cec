"""Predict slides with a saved model: class probabilities per slide, optional heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from her2score.data.lowres import Failure


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
    backend: str = "torch",
) -> tuple[pd.DataFrame, list[Failure]]:
    """Write ``out_csv``: ``slide, predicted, prob_<class>..., status``; unreadable slides get their cause.

    ``backend``: ``torch`` for a ``model.safetensors``, ``onnxruntime`` for an ONNX file written by
    :func:`her2score.export.onnx.export_onnx`.

    Folders among ``slides`` are expanded to the slide and image files in them, by content. Two runs
    writing the same ``out_csv`` do not overlap: the second is refused (:func:`her2score.io.output_lock`).
    """
    from her2score.io import output_lock

    out_csv = Path(out_csv)
    with output_lock(out_csv.parent, name=f".{out_csv.name}.lock"):  # two runs writing one CSV
        return _predict_locked(
            model_path, slides, out_csv, heatmap_dir, device, mpp, cache_dir, workers, quiet, backend
        )


def _predict_locked(
    model_path: str | Path,
    slides: list[str | Path],
    out_csv: Path,
    heatmap_dir: str | Path | None,
    device: str,
    mpp: float | None,
    cache_dir: str | Path | None,
    workers: int,
    quiet: bool,
    backend: str,
) -> tuple[pd.DataFrame, list[Failure]]:
    from her2score.engine.predictor import Predictor, prediction_frame
    from her2score.io import write_csv
    from her2score.paths import cache_dir as default_cache
    from her2score.slide.discover import expand_inputs

    predictor, meta = Predictor.from_checkpoint(model_path, device, backend)
    files = expand_inputs(slides)
    rows = [{"slide": str(f), "mpp": mpp} for f in files]
    prepared = predictor.kind.prepare(rows, cache_dir or default_cache("lowres"), workers, quiet)
    names = [str(files[i]) for i in prepared.positions]
    probs = predictor.predict(prepared)
    frame = prediction_frame(names, probs, meta["classes"])
    expected = meta.get("input_stain", "ihc")
    frame["status"] = [stain_status(predictor.kind.picture(prepared, i), expected) for i in range(len(names))]
    if prepared.failures:
        failed = pd.DataFrame({"slide": [f.slide for f in prepared.failures]})
        failed["status"] = [f"skipped: {f.cause}" for f in prepared.failures]
        frame = pd.concat([frame, failed], ignore_index=True)
    order = {str(f): i for i, f in enumerate(files)}
    frame = frame.sort_values("slide", key=lambda s: s.map(order)).reset_index(drop=True)
    write_csv(out_csv, frame, float_format="%.6f")
    if heatmap_dir is not None and len(names):
        predictor.heatmaps(prepared, names, heatmap_dir, classes=meta["classes"])
    return frame, prepared.failures


def stain_status(picture: Any, expected: str = "ihc") -> str:
    """``ok``, or a warning when an input picture (H, W, 3 uint8) does not carry the stain the model
    reads (``ihc`` or ``he``): its answer would be void. Inputs without a picture (feature bags): ``ok``."""
    if picture is None:
        return "ok"
    from her2score.slide.tissue import tissue_mask
    from her2score.stain.detect import looks_like_he

    mask = tissue_mask(picture)
    if not mask.any():
        return "ok"
    he = looks_like_he(picture, mask)
    if expected == "ihc" and he:
        return "warning: looks like H&E, not IHC; this prediction is meaningless"
    if expected == "he" and not he:
        return "warning: does not look like H&E (an IHC image?); this model reads H&E"
    return "ok"
