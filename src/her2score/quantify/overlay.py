"""Overlay PNG for a pathologist: each cell outlined in its membrane-class colour, with a legend.

HER2 patches and cores: the cell outline (where the membrane is measured) is drawn over the image in the
class colour; non-tumour cells get a thin grey nucleus outline. Whole slides: a downsampled overview
with one dot per tumour cell. A legend strip below gives the colours, the counts and the score.
Nuclear markers (ER, PR, Ki-67): each nucleus outlined in its intensity colour (:func:`nuclear_overlay`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2score.rules import MEMBRANE_CLASSES

#: Class colours chosen to stay visible over brown DAB and blue hematoxylin.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "none": (40, 110, 255),
    "faint-incomplete": (255, 230, 0),
    "faint-complete": (255, 140, 0),
    "moderate-complete": (235, 20, 20),
    "intense-complete": (200, 0, 200),
}
NON_TUMOUR = (150, 150, 150)
#: Nucleus outline colours of the cells that are not scored, by kind (``cell_kind``).
KIND_COLOURS: dict[str, tuple[int, int, int]] = {
    "stromal": NON_TUMOUR,
    "inflammatory": (0, 190, 190),
    "endothelial": (0, 150, 0),
    "other": (80, 80, 80),
}


def _boundaries(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def cell_overlay(rgb: np.ndarray, cells: Any, seg: Any, summary: dict[str, Any] | None = None) -> np.ndarray:
    """Image with cell outlines coloured by membrane class, plus a legend strip (RGB uint8)."""
    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    n = seg.n_cells
    lut = np.zeros((n + 1, 3), dtype=np.uint8)
    tumour_lut = np.zeros(n + 1, dtype=bool)
    if len(cells):
        ids = cells["cell_id"].to_numpy()
        names = cells["membrane_class"].astype(str).to_numpy()
        tumour = cells["is_tumour"].to_numpy(dtype=bool)
        colours = np.array([CLASS_COLOURS[c] for c in names], dtype=np.uint8)
        if (
            "cell_kind" in cells
        ):  # non-tumour nuclei in their kind's colour (a tumour cell cut by the edge: grey)
            kinds = cells["cell_kind"].astype(str).to_numpy()
            others = np.array([KIND_COLOURS.get(k, NON_TUMOUR) for k in kinds], dtype=np.uint8)
        else:
            others = np.broadcast_to(np.array(NON_TUMOUR, dtype=np.uint8), colours.shape)
        lut[ids] = np.where(tumour[:, None], colours, others)
        tumour_lut[ids] = tumour
    cell_edge = _boundaries(seg.cells) & tumour_lut[seg.cells]
    nucleus_edge = _boundaries(seg.nuclei) & ~tumour_lut[seg.nuclei]
    if max(out.shape[:2]) >= 1500:  # thicker lines on large images, so that a zoomed-out view reads
        from scipy import ndimage as ndi

        grown = ndi.grey_dilation(seg.cells * cell_edge, size=2)
        cell_edge = grown > 0
        out[cell_edge] = lut[grown[cell_edge]]
    else:
        out[cell_edge] = lut[seg.cells[cell_edge]]
    out[nucleus_edge] = lut[seg.nuclei[nucleus_edge]]
    return add_legend(out, cells, summary)


def dot_overlay(
    overview: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    classes: np.ndarray,
    summary: dict[str, Any] | None,
    overview_mpp: float | None = None,
) -> np.ndarray:
    """Slide overview with one dot per tumour cell (``xs, ys`` in overview px, ``classes`` indices).

    Dots are ~8 µm across (a cell's core) when the overview is fine enough, at least one pixel.
    """
    palette = np.array([CLASS_COLOURS[c] for c in MEMBRANE_CLASSES], dtype=np.uint8)
    return add_legend(draw_dots(overview, xs, ys, classes, palette, 4.0, overview_mpp), None, summary)


def draw_dots(
    overview: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    classes: np.ndarray,
    palette: np.ndarray,
    radius_um: float,
    overview_mpp: float | None,
) -> np.ndarray:
    """A copy of ``overview`` with a dot of ``radius_um`` (at least one pixel) per point, coloured by its
    class index; the weaker classes are drawn first so that strong staining stays on top."""
    out = np.array(overview[..., :3], dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    radius = 0 if overview_mpp is None else int(min(5, max(0, round(radius_um / overview_mpp))))
    order = np.argsort(classes, kind="stable")
    xi = np.round(xs[order]).astype(np.int64)
    yi = np.round(ys[order]).astype(np.int64)
    colours = palette[classes[order]]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius + radius:
                out[np.clip(yi + dy, 0, h - 1), np.clip(xi + dx, 0, w - 1)] = colours
    return out


def add_legend(image: np.ndarray, cells: Any, summary: dict[str, Any] | None) -> np.ndarray:
    """Append a white strip under the image with the class colours, counts and the score."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape[:2]
    scale = max(1, round(w / 1000))
    try:
        font = ImageFont.load_default(size=13 * scale)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    line = 18 * scale
    strip_h = line * 3 + 8 * scale
    canvas = Image.new("RGB", (w, h + strip_h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    counts = {}
    if summary is not None:
        counts = {c: summary.get(f"n_{c.replace('-', '_')}", 0) for c in MEMBRANE_CLASSES}
    elif cells is not None and len(cells):
        tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
        counts = tumour["membrane_class"].astype(str).value_counts().to_dict()
    x, y = 6 * scale, h + 4 * scale
    box = 12 * scale
    for name in MEMBRANE_CLASSES:
        label = f"{name} ({counts.get(name, 0)})" if counts else name
        draw.rectangle([x, y + 2, x + box, y + 2 + box], fill=CLASS_COLOURS[name], outline="black")
        draw.text((x + box + 4 * scale, y), label, fill="black", font=font)
        x += box + 12 * scale + int(draw.textlength(label, font=font))
        if x > w - 180 * scale:
            x, y = 6 * scale, y + line
    if cells is not None:
        for kind, colour in KIND_COLOURS.items():
            n = summary.get(f"n_cells_{kind}") if summary is not None else None
            label = f"{kind} nucleus" + (f" ({n})" if n is not None else "")
            draw.rectangle([x, y + 2, x + box, y + 2 + box], outline=colour, width=2)
            draw.text((x + box + 4 * scale, y), label, fill="black", font=font)
            x += box + 12 * scale + int(draw.textlength(label, font=font))
            if x > w - 180 * scale:
                x, y = 6 * scale, y + line
    if summary is not None:
        if summary.get("scorable") is False:
            reason, n = summary.get("reason", ""), summary["n_tumour_cells"]
            text = f"HER2 not scorable: {reason}   tumour cells {n}"
            draw.text((6 * scale, h + strip_h - line), text, fill="black", font=font)
            return np.asarray(canvas)
        text = (
            f"HER2 {summary['category']}"
            + (f" ({summary['her2_0_subtype']})" if summary.get("her2_0_subtype") else "")
            + f"   group {summary['her2_3way']}   H-score {summary['h_score']:.0f}"
            + f"   HER2 index {summary['her2_index']:.1f}   tumour cells {summary['n_tumour_cells']}"
        )
        draw.text((6 * scale, h + strip_h - line), text, fill="black", font=font)
    return np.asarray(canvas)


#: Nuclear intensity colours (negative, weak, moderate, strong), visible over brown and blue.
NUCLEAR_COLOURS: dict[str, tuple[int, int, int]] = {
    "negative": (40, 110, 255),
    "weak": (255, 230, 0),
    "moderate": (255, 140, 0),
    "strong": (235, 20, 20),
}


def nuclear_overlay(
    rgb: np.ndarray, nuclei: Any, labels: np.ndarray, summary: dict[str, Any] | None = None
) -> np.ndarray:
    """Image with each tumour nucleus outlined in its intensity colour (non-tumour nuclei grey), and a
    legend strip with the counts and the score (ER/PR/Ki-67)."""
    from her2score.quantify.nuclear import NUCLEAR_INTENSITIES

    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    palette = np.array([NUCLEAR_COLOURS[c] for c in NUCLEAR_INTENSITIES], dtype=np.uint8)
    lut = np.zeros((int(labels.max()) + 1, 3), dtype=np.uint8)
    if len(nuclei):
        ids = nuclei["cell_id"].to_numpy()
        tumour = nuclei["is_tumour"].to_numpy(dtype=bool)
        colours = palette[nuclei["intensity"].to_numpy(dtype=np.int64)]
        lut[ids] = np.where(tumour[:, None], colours, np.array(NON_TUMOUR, dtype=np.uint8))
    edge = _boundaries(labels)
    if max(out.shape[:2]) >= 1500:
        from scipy import ndimage as ndi

        grown = ndi.grey_dilation(labels * edge, size=2)
        edge = grown > 0
        out[edge] = lut[grown[edge]]
    else:
        out[edge] = lut[labels[edge]]
    return nuclear_legend(out, summary)


def nuclear_dot_overlay(
    overview: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    intensity: np.ndarray,
    summary: dict[str, Any] | None,
    overview_mpp: float | None = None,
) -> np.ndarray:
    """Slide overview with one dot per tumour nucleus in its intensity colour (strongest on top)."""
    from her2score.quantify.nuclear import NUCLEAR_INTENSITIES

    palette = np.array([NUCLEAR_COLOURS[c] for c in NUCLEAR_INTENSITIES], dtype=np.uint8)
    return nuclear_legend(draw_dots(overview, xs, ys, intensity, palette, 3.0, overview_mpp), summary)


def nuclear_legend(image: np.ndarray, summary: dict[str, Any] | None) -> np.ndarray:
    """Append a white strip under the image with the nuclear classes, counts and the score."""
    from PIL import Image, ImageDraw, ImageFont

    from her2score.quantify.nuclear import NUCLEAR_INTENSITIES

    h, w = image.shape[:2]
    scale = max(1, round(w / 1000))
    try:
        font = ImageFont.load_default(size=13 * scale)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    line = 18 * scale
    strip_h = line * 3 + 8 * scale
    canvas = Image.new("RGB", (w, h + strip_h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y, box = 6 * scale, h + 4 * scale, 12 * scale
    summary = summary or {}
    entries = [
        (f"{name} ({summary.get(f'n_{name}', 0)})", NUCLEAR_COLOURS[name]) for name in NUCLEAR_INTENSITIES
    ]
    entries.append(("non-tumour nucleus", NON_TUMOUR))
    for label, colour in entries:
        draw.rectangle([x, y + 2, x + box, y + 2 + box], fill=colour, outline="black")
        draw.text((x + box + 4 * scale, y), label, fill="black", font=font)
        x += box + 12 * scale + int(draw.textlength(label, font=font))
        if x > w - 180 * scale:
            x, y = 6 * scale, y + line
    marker = str(summary.get("marker", "")).upper().replace("KI67", "Ki-67")
    if summary.get("scorable") is False:
        text = (
            f"{marker} not scorable: {summary.get('reason', '')}   tumour nuclei {summary.get('n_nuclei', 0)}"
        )
    elif summary:
        text = f"{marker} {summary['pct_positive']:.1f}% positive   H-score {summary['h_score']:.0f}"
        if summary.get("receptor_status"):
            text += f"   Allred {summary['allred']}   status {summary['receptor_status']}"
        text += f"   tumour nuclei {summary['n_nuclei']}"
    else:
        text = ""
    draw.text((6 * scale, h + strip_h - line), text, fill="black", font=font)
    return np.asarray(canvas)
