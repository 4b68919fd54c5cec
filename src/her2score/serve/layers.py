"""Overlay layers of the viewer: transparent PNGs placed over the slide by a level-0 rectangle.

* ``cells``: the quantifier's tumour cells, one dot each in its membrane-class colour
  (:data:`her2score.quantify.overlay.CLASS_COLOURS`), drawn over the whole slide.
* ``heatmap``: the model's map (Grad-CAM for the low-resolution classifiers, as
  :meth:`~her2score.engine.predictor.Predictor.explain` gives it) over the square the model read: the
  tissue's bounding box at the model's µm/px, fitted into its input square
  (:func:`her2score.data.lowres.lowres_image`), mapped back to level-0 pixels by :func:`model_square`.

Each layer is ``(png bytes, {"x", "y", "width", "height"})`` with the rectangle in level-0 pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from her2score.serve.tiles import encode_png

#: Longest side of the cell layer in pixels.
CELL_LAYER_MAX_SIDE = 2048
#: Opacity of the heatmap's colours over tissue (0..1).
HEAT_ALPHA = 0.6


def cell_layer(cells: Any, width: int, height: int, level0_mpp: float) -> tuple[bytes, dict[str, float]]:
    """Tumour cells (``x``, ``y`` level-0 px, ``membrane_class``) as coloured dots on a transparent PNG."""
    from her2score.quantify.overlay import CLASS_COLOURS, draw_dots
    from her2score.rules import MEMBRANE_CLASSES

    scale = min(1.0, CELL_LAYER_MAX_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)] if len(cells) else cells
    xs = tumour["x"].to_numpy(dtype=np.float64) * scale if len(tumour) else np.zeros(0)
    ys = tumour["y"].to_numpy(dtype=np.float64) * scale if len(tumour) else np.zeros(0)
    order = {c: i for i, c in enumerate(MEMBRANE_CLASSES)}
    classes = np.array([order[c] for c in tumour["membrane_class"].astype(str)] if len(tumour) else [], int)
    palette = np.array([CLASS_COLOURS[c] for c in MEMBRANE_CLASSES], dtype=np.uint8)
    blank = np.zeros((h, w, 3), dtype=np.uint8)
    layer_mpp = level0_mpp / scale
    colours = draw_dots(blank, xs, ys, classes, palette, 4.0, layer_mpp)
    opaque = draw_dots(blank, xs, ys, classes, np.full_like(palette, 255), 4.0, layer_mpp)[..., :1]
    rgba = np.concatenate([colours, opaque], axis=2)
    return encode_png(rgba), {"x": 0.0, "y": 0.0, "width": float(width), "height": float(height)}


def model_square(path: Path, params: Any, slide_mpp: float | None) -> dict[str, float] | None:
    """The level-0 rectangle that a low-resolution model's input square covers, or None (no tissue).

    Mirrors :func:`her2score.data.lowres.lowres_image`: the overview at ``params.mpp``, the tissue's
    bounding box grown by the margin and clipped to the image, fitted into ``params.size`` and centred.
    """
    from her2score.slide import open_slide, tissue_bbox, tissue_mask

    with open_slide(path, mpp=slide_mpp) as slide:
        rgb, read_mpp = slide.read_overview(mpp=params.mpp)
        to_level0 = read_mpp / slide.require_mpp()
    box = tissue_bbox(tissue_mask(rgb, mpp=read_mpp))
    if box is None:
        return None
    x0, y0, x1, y1 = box
    pad = round(params.margin * max(x1 - x0, y1 - y0))
    h, w = rgb.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    cw, ch = cx1 - cx0, cy1 - cy0
    scale = params.size / max(cw, ch)
    if not params.upscale:
        scale = min(scale, 1.0)
    nw, nh = max(1, round(cw * scale)), max(1, round(ch * scale))
    ox, oy = (params.size - nw) // 2, (params.size - nh) // 2
    side = params.size / scale * to_level0
    return {
        "x": (cx0 - ox / scale) * to_level0,
        "y": (cy0 - oy / scale) * to_level0,
        "width": side,
        "height": side,
    }


def heat_layer(picture: np.ndarray, heat: np.ndarray) -> bytes:
    """The model's map coloured over the tissue of its input ``picture`` (transparent elsewhere)."""
    from her2score.report.heatmap import overlay_heatmap
    from her2score.slide import tissue_mask

    mask = tissue_mask(picture)
    if not mask.any():
        mask = np.ones(picture.shape[:2], dtype=bool)
    colours = overlay_heatmap(picture, heat, alpha=1.0, mask=mask)
    alpha = np.where(mask, round(255 * HEAT_ALPHA), 0).astype(np.uint8)[..., None]
    return encode_png(np.concatenate([colours, alpha], axis=2))
