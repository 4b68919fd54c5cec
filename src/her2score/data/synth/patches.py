"""Single IHC patches and paired H&E / HER2-IHC patches (consecutive sections of the same tissue)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from her2score.data.synth.cells import (
    GRADE_BY_HER2,
    HER2_CATEGORIES,
    MARKERS,
    MEMBRANE_INTENSITY,
    RECEPTOR_CATEGORIES,
    Case,
    Layout,
    build_layout,
    cells_table,
    enforce_her2_category,
)
from her2score.data.synth.glands import check_architecture
from her2score.data.synth.render import jpeg_roundtrip, make_stamps, render_region, site_style

_MARKER_CODE = {m: i for i, m in enumerate(MARKERS)}


def draw_grade(her2: str, rng: np.random.Generator) -> float:
    """Morphological grade (0..1) of a case: higher on average with HER2, with strong overlap."""
    return float(np.clip(GRADE_BY_HER2[her2] + rng.normal(0, 0.18), 0.0, 1.0))


def _case(category: str, marker: str, rng: np.random.Generator, architecture: str = "solid") -> Case:
    check_architecture(architecture)
    if marker not in MARKERS:
        raise ValueError(f"unknown marker {marker!r}; expected one of {MARKERS}")
    if marker == "her2":
        if category not in HER2_CATEGORIES:
            raise ValueError(f"unknown HER2 category {category!r}; expected one of {HER2_CATEGORIES}")
        return Case(her2=category, marker="her2", grade=draw_grade(category, rng), architecture=architecture)
    if category not in RECEPTOR_CATEGORIES:
        raise ValueError(f"unknown {marker.upper()} category {category!r}; expected 'pos' or 'neg'")
    return Case(
        er=category if marker == "er" else "neg",
        pr=category if marker == "pr" else "neg",
        marker=marker,
        grade=float(rng.uniform(0.05, 0.7)),
        architecture=architecture,
    )


def _rng(kind: int, category: str, seed: int, site: int, marker: str) -> np.random.Generator:
    cat = sum(ord(ch) * 31**i for i, ch in enumerate(category))
    return np.random.default_rng([int(seed), int(site), _MARKER_CODE.get(marker, 9), cat, kind])


def render_ihc_patch(
    category: str,
    size: tuple[int, int] = (512, 512),
    mpp: float = 0.5,
    seed: int = 0,
    site: int = 0,
    marker: str = "her2",
    architecture: str = "solid",
    tumour_fraction: float | None = None,
    blush: float | None = None,
    dab_gain: float | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Render one IHC patch of ``size`` (width, height) px at ``mpp`` µm/px and its per-cell truth.

    ``category`` is ``0``, ``1+``, ``2+`` or ``3+`` for HER2 (membrane DAB), ``pos``/``neg`` for ER/PR
    (nuclear DAB). The tumour cells' ``membrane_class`` fractions score ``category`` by the ASCO/CAP
    10% rule (ER/PR: ``nuclear_positive`` by the 1% rule). Cell ``x, y`` are in patch pixels.
    ``architecture="glandular"`` draws the tumour as tubular glands of columnar cells
    (:mod:`~her2score.data.synth.glands`; truth gains ``membrane_pattern``, ring or basolateral, and
    basolateral "U" membranes count as complete, as the gastric rulebook reads them).
    ``tumour_fraction`` (share of the tissue that is tumour; 1.0: a field packed with tumour) and
    ``blush`` (cytoplasmic DAB of the tumour cells, OD) and ``dab_gain`` (the section's membrane
    staining strength, x the site's; 0.45 brings the 3+ membranes' 90th percentile to the 0.4-0.6 OD of
    real scans, and the 1+ below the faint threshold) replace the drawn ones (None: drawn).
    """
    rng = _rng(0, category, seed, site, marker)
    case = _case(category, marker, rng, architecture)
    w, h = int(size[0]), int(size[1])
    layout = build_layout(
        (h, w), mpp, case, rng, whole_slide=False, artefacts=False, tumour_fraction=tumour_fraction
    )
    if blush is not None:
        layout.blush = float(blush)
    if dab_gain is not None:
        layout.dab_gain = float(dab_gain)
    stamps = make_stamps(mpp, case.grade, rng)
    style = site_style(site)
    rgb = render_region(layout, stamps, style, 0, 0, h, w, "ihc")
    return jpeg_roundtrip(rgb, style.jpeg_quality), cells_table(layout)


def render_pair(
    category: str,
    size: tuple[int, int] = (512, 512),
    mpp: float = 0.5,
    seed: int = 0,
    site: int = 0,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Render an H&E patch and the HER2-IHC patch of the next section: same cells, slightly moved.

    The IHC section is shifted by up to ~2% of the patch and rotated by up to 2°, as consecutive
    sections are. Returns ``(he_rgb, ihc_rgb, cells)``; cell ``x, y`` are in IHC pixels and ``x_he,
    y_he`` in H&E pixels; the IHC tumour cells score ``category`` by ASCO/CAP.
    """
    rng = _rng(1, category, seed, site, "her2")
    case = _case(category, "her2", rng)
    w, h = int(size[0]), int(size[1])
    margin = int(np.ceil(0.06 * max(w, h))) + 8
    layout = build_layout(
        (h + 2 * margin, w + 2 * margin), mpp, case, rng, whole_slide=False, artefacts=False
    )
    stamps = make_stamps(mpp, case.grade, rng)
    style = site_style(site)

    # IHC pixel q shows layout point  R @ (q - centre) + centre + margin + shift.
    angle = np.deg2rad(rng.uniform(-2.0, 2.0))
    shift = rng.uniform(-0.02, 0.02, 2) * [h, w]
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre + margin + shift - rot @ centre

    c = layout.cells
    pts = np.stack([c["y"], c["x"]], axis=1).astype(np.float64)
    ihc_pts = (pts - offset) @ rot  # inverse of the rotation applied to rows
    inside = (ihc_pts[:, 0] >= 0) & (ihc_pts[:, 0] < h) & (ihc_pts[:, 1] >= 0) & (ihc_pts[:, 1] < w)
    _enforce_within(layout, inside, case.her2, rng)

    he = render_region(layout, stamps, style, margin, margin, h, w, "he")
    ihc_full = render_region(layout, stamps, style, 0, 0, h + 2 * margin, w + 2 * margin, "ihc")
    ihc = np.stack(
        [
            ndimage.affine_transform(ihc_full[..., ch], rot, offset=offset, output_shape=(h, w), order=1)
            for ch in range(3)
        ],
        axis=-1,
    )
    cells = cells_table(layout)
    keep = inside[c["kind"] <= 2]
    ihc_sel = ihc_pts[c["kind"] <= 2][keep]
    cells = cells[keep].reset_index(drop=True)
    cells["x_he"] = cells["x"] - margin
    cells["y_he"] = cells["y"] - margin
    cells["x"] = ihc_sel[:, 1].astype(np.float32)
    cells["y"] = ihc_sel[:, 0].astype(np.float32)
    cells["cell_id"] = np.arange(len(cells), dtype=np.int32)
    return (
        jpeg_roundtrip(he, style.jpeg_quality),
        jpeg_roundtrip(np.ascontiguousarray(ihc), style.jpeg_quality),
        cells,
    )


def _enforce_within(layout: Layout, inside: np.ndarray, category: str, rng: np.random.Generator) -> None:
    """Make the tumour cells inside a crop score ``category`` (the crop loses some of the layout's cells)."""
    c = layout.cells
    sel = np.flatnonzero(inside & (c["kind"] == 0))
    old = c["membrane"][sel]
    new = enforce_her2_category(old, category, rng)
    changed = sel[new != old]
    if changed.size == 0:
        return
    c["membrane"][sel] = new
    c["intensity"][changed] = MEMBRANE_INTENSITY[c["membrane"][changed]]
    codes = c["membrane"][changed]
    comp = np.where(codes == 1, rng.uniform(0.15, 0.8, changed.size), rng.uniform(0.92, 1.0, changed.size))
    c["completeness"][changed] = np.where(codes == 0, 0.0, comp).astype(np.float32)
