"""Cell layouts and their ground truth: where the tissue, tumour nests, stroma, fat and cells are, and
how strongly each tumour cell's membrane (HER2) or nucleus (ER/PR) carries DAB.

The truth follows the one rulebook, :mod:`her2score.rules` (ASCO/CAP 2018 for HER2, read cumulatively:
3+ when more than 10% of tumour cells have intense complete membrane staining; else 2+ when more than 10%
have complete staining of any intensity, or 1-10% intense complete staining; else 1+ when more than 10%
have any staining; else 0). ER/PR are positive when at least 1% of tumour nuclei stain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from her2score import rules
from her2score.data.synth.glands import (
    PATTERN_RING,
    PATTERN_U,
    PATTERNS,
    check_architecture,
    coarse_cover,
    gland_cells,
    place_glands,
)
from her2score.rules import HER2_CATEGORIES, MEMBRANE_CLASSES, RECEPTOR_STATUSES

if TYPE_CHECKING:
    import pandas as pd

RECEPTOR_CATEGORIES = RECEPTOR_STATUSES
MARKERS = ("her2", "er", "pr")
CELL_TYPES = ("tumour", "fibroblast", "lymphocyte", "adipocyte", "dust")

#: Intensity (0 none .. 3 intense) of each membrane class, in MEMBRANE_CLASSES order.
MEMBRANE_INTENSITY = np.array(rules.MEMBRANE_INTENSITY, dtype=np.int8)
#: Typical membrane DAB optical density per intensity (0, 1, 2, 3), before site and slide gains.
MEMBRANE_DAB_OD = np.array([0.0, 0.16, 0.42, 1.0], dtype=np.float32)
#: Typical nuclear DAB optical density per intensity for ER/PR.
NUCLEAR_DAB_OD = np.array([0.0, 0.22, 0.5, 0.9], dtype=np.float32)

#: Coarse grid used for region maps (tissue, tumour, fat, artefacts), in µm/px.
COARSE_MPP = 4.0

#: Nominal "grade" (morphological aggressiveness, 0..1) by HER2 category: higher HER2 goes with higher
#: cellularity and larger, more pleomorphic nuclei on average, with strong overlap (noise added per case).
GRADE_BY_HER2 = {"0": 0.2, "1+": 0.3, "2+": 0.45, "3+": 0.7}


# --------------------------------------------------------------------------- ASCO/CAP truth
def her2_category(membrane_class: Sequence[str] | np.ndarray) -> str:
    """HER2 IHC category (``0``, ``1+``, ``2+``, ``3+``) of a set of tumour cells by the rulebook
    (:func:`her2score.rules.her2_category_of_cells`); classes as names or indices."""
    return rules.her2_category_of_cells(membrane_class)


def _category_index(codes: np.ndarray) -> int:
    return HER2_CATEGORIES.index(rules.her2_category_of_cells(codes))


def draw_membrane_mixture(category: str, rng: np.random.Generator) -> np.ndarray:
    """Fractions of tumour cells in each membrane class for one case of ``category``.

    Ranges overlap near the thresholds (a 1+ case may have 13% faint incomplete cells, a 0 case 8%) and
    positive cases mix classes (a 3+ case has moderate and faint cells too).
    """
    u = rng.uniform
    if category == "0":
        stained = u(0.0, 0.02) if u() < 0.5 else u(0.02, 0.085)
        p = [1 - stained, 0.9 * stained, 0.1 * stained, 0.0, 0.0]
    elif category == "1+":
        fi = u(0.13, 0.8)
        fc, mc = u(0.0, 0.05), u(0.0, 0.03)
        p = [1 - fi - fc - mc, fi, fc, mc, 0.0]
    elif category == "2+":
        complete = u(0.13, 0.75)
        share = u(0.3, 0.75)
        ic = u(0.0, 0.07)
        fi = u(0.05, 0.35) * (1 - complete - ic)
        p = [1 - complete - ic - fi, fi, complete * share, complete * (1 - share), ic]
    elif category == "3+":
        ic = u(0.13, 0.9)
        mc = u(0.03, 0.35) * (1 - ic)
        fc = u(0.0, 0.3) * (1 - ic - mc)
        fi = u(0.0, 0.4) * (1 - ic - mc - fc)
        p = [1 - ic - mc - fc - fi, fi, fc, mc, ic]
    else:
        raise ValueError(f"unknown HER2 category {category!r}; expected one of {HER2_CATEGORIES}")
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    return p / p.sum()


def enforce_her2_category(
    codes: np.ndarray, category: str, rng: np.random.Generator, margin: float = 0.03
) -> np.ndarray:
    """Re-label the fewest cells so that ``codes`` (membrane class indices) score ``category``.

    Every fraction that decides the category is kept at least ``margin`` (3 points by default) away
    from the 10% cut on its side (a 2+ case has at most 7% intense complete and at least 13% complete
    cells, ...), so that the truth is not a coin toss at the cut. Drawn fractions mostly sit there
    already; this fixes the local heterogeneity and the sampling noise of small patches.
    """
    codes = codes.copy()
    n = codes.size
    if n == 0:
        return codes
    limit = min(n // 10, int(np.floor(n * (0.10 - margin) + 1e-9)))  # at most 7%, never over 10%
    need = max(n // 10 + 1, int(np.ceil(n * (0.10 + margin) - 1e-9)))  # at least 13%, always over 10%

    def pick(mask: np.ndarray, k: int) -> np.ndarray:
        return rng.permutation(np.flatnonzero(mask))[:k]

    def at_most(mask: np.ndarray, k_max: int, to: int) -> None:
        excess = int(mask.sum()) - k_max
        if excess > 0:
            codes[pick(mask, excess)] = to

    def at_least(mask: np.ndarray, k_min: int, to: int | np.ndarray) -> None:
        lack = k_min - int(mask.sum())
        if lack > 0:
            idx = pick(~mask, lack)
            codes[idx] = to if np.isscalar(to) else rng.choice(to, size=idx.size)

    cat = HER2_CATEGORIES.index(category)
    if cat == 3:
        at_least(codes == 4, need, 4)
    elif cat == 2:
        at_most(codes == 4, limit, 3)
        at_least(codes >= 2, need, np.array([2, 3]))
    elif cat == 1:
        at_most(codes >= 2, limit, 1)
        at_least(codes >= 1, need, 1)
        at_most(codes == 4, 0, 3)  # intense complete cells, however few, are the 2+ minority pattern
    else:
        at_most(codes >= 1, limit, 0)
        at_most(codes == 4, 0, 1)
    assert _category_index(codes) == cat
    return codes


def draw_receptor_fraction(status: str, rng: np.random.Generator) -> float:
    """Fraction of ER/PR-positive tumour nuclei for a case of ``status`` (``pos``/``neg``)."""
    if status == "pos":
        return rng.uniform(0.015, 0.1) if rng.uniform() < 0.15 else rng.uniform(0.3, 0.97)
    if status == "neg":
        return 0.0 if rng.uniform() < 0.6 else rng.uniform(0.0, 0.006)
    raise ValueError(f"unknown receptor status {status!r}; expected 'pos' or 'neg'")


def enforce_receptor_status(positive: np.ndarray, status: str, rng: np.random.Generator) -> np.ndarray:
    """Flip the fewest nuclei so that ``positive`` scores ``status`` by the 1% rule."""
    positive = positive.copy()
    n = positive.size
    if n == 0:
        return positive
    k = int(positive.sum())
    need = -(-n // 100)  # ceil(1% of n)
    if status == "pos" and k < need:
        positive[rng.permutation(np.flatnonzero(~positive))[: need - k]] = True
    elif status == "neg" and k >= need:
        positive[rng.permutation(np.flatnonzero(positive))[: k - need + 1]] = False
    return positive


# --------------------------------------------------------------------------- layout
@dataclass
class Case:
    """What a layout must show: the marker on the section and the patient's true statuses."""

    her2: str = "0"
    er: str = "neg"
    pr: str = "neg"
    marker: str = "her2"
    grade: float = 0.3
    #: How the tumour grows: ``solid`` (nests and sheets of round cells, the default) or ``glandular``
    #: (tubular glands of columnar cells round a lumen, :mod:`her2score.data.synth.glands`).
    architecture: str = "solid"


@dataclass
class Layout:
    """Region maps on a coarse grid and every cell of a section, in level-0 pixels."""

    height: int
    width: int
    mpp: float
    coarse_factor: int  # level-0 px per coarse px
    fields: dict[str, np.ndarray]  # coarse float32 maps in 0..1: tissue, tumour, fat, ink, fold, focus
    cells: dict[str, np.ndarray]  # per-cell arrays of equal length
    case: Case
    blush: float = 0.0  # cytoplasmic (non-membranous) DAB in tumour, OD
    dab_gain: float = 1.0  # slide-level staining strength (batch variation)
    ink_colour: int = 0
    extras: dict[str, object] = field(default_factory=dict)


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian-filtered white noise (drawn coarser and zoomed when smooth)."""
    step = max(1, int(sigma / 3))
    small = (-(-shape[0] // step), -(-shape[1] // step))
    noise = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / step, mode="wrap")
    if step > 1:
        noise = ndimage.zoom(noise, step, order=1, mode="grid-wrap", grid_mode=True)[: shape[0], : shape[1]]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _tissue_pieces(shape: tuple[int, int], n_pieces: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 irregular tissue blobs (biopsy cores or resection pieces) as a soft 0..1 map."""
    hc, wc = shape
    yy, xx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    wobble = _smooth_noise(shape, max(hc, wc) / 18, rng)
    field_ = np.full(shape, -1.0, dtype=np.float32)
    for i in range(n_pieces):
        # Pieces share the slide along its long axis so that they rarely overlap.
        along = (i + rng.uniform(0.35, 0.65)) / n_pieces
        cy, cx = (
            (hc * rng.uniform(0.35, 0.65), wc * along)
            if wc >= hc
            else (hc * along, wc * rng.uniform(0.35, 0.65))
        )
        span = min(hc, wc * 1.0 / n_pieces) if wc >= hc else min(wc, hc * 1.0 / n_pieces)
        a = span * rng.uniform(0.22, 0.36)
        b = a * rng.uniform(0.45, 1.0)
        if wc >= hc and n_pieces == 1:
            a, b = wc * rng.uniform(0.22, 0.34), hc * rng.uniform(0.2, 0.34)
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        u = ((xx - cx) * c + (yy - cy) * s) / a
        v = (-(xx - cx) * s + (yy - cy) * c) / b
        field_ = np.maximum(field_, 1.0 - np.sqrt(u * u + v * v))
    field_ += 0.22 * wobble
    return np.clip(field_ / 0.04, 0.0, 1.0)


def _threshold_fraction(noise: np.ndarray, inside: np.ndarray, fraction: float) -> np.ndarray:
    """Soft mask where ``noise`` is in its top ``fraction`` within ``inside``."""
    if fraction <= 0 or not inside.any():
        return np.zeros_like(noise)
    t = np.quantile(noise[inside], 1.0 - min(fraction, 1.0))
    return np.clip((noise - t) / 0.15 + 0.5, 0.0, 1.0) * inside


def _hex_grid(h: int, w: int, spacing: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered hexagonal grid of points (y, x) covering an h×w area (float, level-0 px)."""
    dy = spacing * np.sqrt(3) / 2
    ys = np.arange(dy / 2, h, dy)
    xs = np.arange(spacing / 2, w + spacing, spacing)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    xx = xx + (np.arange(ys.size)[:, None] % 2) * spacing / 2
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    pts += rng.normal(0, jitter * spacing, pts.shape)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    return pts[keep]


def _lookup(fieldmap: np.ndarray, pts: np.ndarray, factor: int) -> np.ndarray:
    iy = np.clip((pts[:, 0] // factor).astype(np.int64), 0, fieldmap.shape[0] - 1)
    ix = np.clip((pts[:, 1] // factor).astype(np.int64), 0, fieldmap.shape[1] - 1)
    return fieldmap[iy, ix]


def _stroke(shape: tuple[int, int], rng: np.random.Generator, width: float) -> np.ndarray:
    """A pen-ink stroke (a wobbly thick line) on the coarse grid."""
    from skimage.draw import disk

    hc, wc = shape
    out = np.zeros(shape, dtype=np.float32)
    y, x = rng.uniform(0.1, 0.9) * hc, rng.uniform(0.05, 0.3) * wc
    angle = rng.uniform(-0.6, 0.6)
    n = int(rng.uniform(0.2, 0.5) * wc / max(width / 3, 1))
    for _ in range(n):
        rr, cc = disk((y, x), width / 2, shape=shape)
        out[rr, cc] = 1.0
        angle += rng.normal(0, 0.12)
        y += np.sin(angle) * width / 3
        x += np.cos(angle) * width / 3
    return ndimage.gaussian_filter(out, 1.0)


def build_layout(
    shape: tuple[int, int],
    mpp: float,
    case: Case,
    rng: np.random.Generator,
    *,
    whole_slide: bool = True,
    artefacts: bool = True,
    tumour_fraction: float | None = None,
) -> Layout:
    """Draw the regions and cells of one section of ``shape`` (h, w) level-0 px at ``mpp`` µm/px.

    ``tumour_fraction`` (0..1) sets the share of the tissue that is tumour instead of the drawn one (a
    core packed with tumour: 1.0); the random draws are the same either way."""
    h, w = shape
    factor = max(1, round(COARSE_MPP / mpp))
    hc, wc = -(-h // factor), -(-w // factor)
    um = 1.0 / (mpp * factor)  # coarse px per µm

    if whole_slide:
        tissue = _tissue_pieces((hc, wc), int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])), rng)
    else:
        holes = _smooth_noise((hc, wc), 30 * um, rng)
        tissue = np.clip((holes + 1.8) / 0.3, 0.0, 1.0)  # rarely a gap in a patch
    inside = tissue > 0.5

    g = case.grade
    # The drawn share of tumour (always drawn, so that the random stream is the same whatever is asked).
    drawn = float(np.clip(rng.normal(0.3 + 0.3 * g, 0.08), 0.15, 0.75))
    if not whole_slide:
        drawn = float(np.clip(drawn + 0.15, 0.25, 0.85))
    nest_scale = rng.uniform(25, 60) * um
    if case.architecture == "glandular":  # glands crowd larger tumour areas (a gastric core is mostly tumour)
        drawn, nest_scale = min(drawn + 0.25, 0.9), 2 * nest_scale
    share = drawn if tumour_fraction is None else float(tumour_fraction)
    tumour = _threshold_fraction(_smooth_noise((hc, wc), nest_scale, rng), inside, share)
    rest = inside & (tumour < 0.5)
    fat = _threshold_fraction(_smooth_noise((hc, wc), 60 * um, rng), rest, rng.uniform(0.0, 0.35))
    lymph = _threshold_fraction(
        _smooth_noise((hc, wc), 20 * um, rng), rest & (fat < 0.5), rng.uniform(0.02, 0.1)
    )
    strength = _smooth_noise((hc, wc), rng.uniform(40, 120) * um, rng)  # intra-slide heterogeneity

    zeros = np.zeros((hc, wc), dtype=np.float32)
    ink, fold, focus = zeros, zeros, zeros
    ink_colour = int(rng.integers(0, 3))
    if artefacts and whole_slide:
        if rng.uniform() < 0.5:
            ink = _stroke((hc, wc), rng, width=rng.uniform(60, 160) * um)
        if rng.uniform() < 0.35:
            band = _smooth_noise((hc, wc), 30 * um, rng)
            along = _threshold_fraction(-np.abs(band), inside, 0.04)
            fold = ndimage.gaussian_filter(along, 2.0)
        if rng.uniform() < 0.35:
            cy, cx, r = (
                rng.uniform(0.2, 0.8) * hc,
                rng.uniform(0.2, 0.8) * wc,
                rng.uniform(0.08, 0.2) * min(hc, wc),
            )
            yy, xx = np.mgrid[0:hc, 0:wc]
            focus = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0.0, 1.0).astype(np.float32)
    fields = {
        "tissue": tissue.astype(np.float32),
        "tumour": tumour.astype(np.float32),
        "fat": fat.astype(np.float32),
        "ink": ink.astype(np.float32),
        "fold": fold.astype(np.float32),
        "focus": focus.astype(np.float32),
    }

    glands = None
    if check_architecture(case.architecture) == "glandular":
        glands = place_glands(tumour, tissue, factor, mpp, case.grade, rng)
    cells = _draw_cells((h, w), mpp, factor, fields, lymph, strength, case, rng, whole_slide, glands)
    layout = Layout(
        height=h,
        width=w,
        mpp=mpp,
        coarse_factor=factor,
        fields=fields,
        cells=cells,
        case=case,
        blush=float(rng.uniform(0.03, 0.1)) if case.marker == "her2" and rng.uniform() < 0.3 else 0.0,
        dab_gain=float(np.exp(rng.normal(0, 0.12))),
        ink_colour=ink_colour,
    )
    if glands is not None:
        layout.extras["glands"] = glands
        layout.extras["gland_first"] = np.concatenate([[0], np.cumsum(glands["n_cells"])[:-1]])
    return layout


def tumour_spacing_um(grade: float) -> float:
    """Centre-to-centre distance of tumour cells: denser (more cellular) at higher grade."""
    return 16.0 - 4.0 * grade


def _draw_cells(
    shape: tuple[int, int],
    mpp: float,
    factor: int,
    fields: dict[str, np.ndarray],
    lymph: np.ndarray,
    strength: np.ndarray,
    case: Case,
    rng: np.random.Generator,
    whole_slide: bool,
    glands: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    h, w = shape
    tissue, tumour, fat = fields["tissue"], fields["tumour"], fields["fat"]
    if glands is None:
        stroma = (tissue > 0.5) & (tumour < 0.5) & (fat < 0.5)
        spacing = tumour_spacing_um(case.grade) * rng.uniform(0.93, 1.07) / mpp
        t_pts = _hex_grid(h, w, spacing, 0.12, rng)
        t_pts = t_pts[(_lookup(tumour, t_pts, factor) > 0.5) & (_lookup(tissue, t_pts, factor) > 0.5)]
        if t_pts.shape[0] == 0:  # a patch must show tumour: put a small nest in the middle
            t_pts = _hex_grid(min(h, int(6 * spacing)), min(w, int(6 * spacing)), spacing, 0.12, rng)
            t_pts += [(h - min(h, 6 * spacing)) / 2, (w - min(w, 6 * spacing)) / 2]
    else:  # stroma between the glands too (desmoplastic), none inside them
        gcells = gland_cells(glands, mpp, case.grade, rng)
        t_pts = np.stack([gcells["y"], gcells["x"]], axis=1)
        stroma = (tissue > 0.5) & (fat < 0.5) & ~coarse_cover(glands, tumour.shape, factor)

    f_pts = _hex_grid(h, w, 22 / mpp, 0.45, rng)
    f_pts = f_pts[_lookup(stroma, f_pts, factor) & (rng.uniform(size=len(f_pts)) < 0.7)]
    l_pts = _hex_grid(h, w, 9 / mpp, 0.3, rng)
    l_prob = 0.03 + 0.9 * _lookup(lymph, l_pts, factor)
    l_pts = l_pts[_lookup(stroma, l_pts, factor) & (rng.uniform(size=len(l_pts)) < l_prob)]
    a_pts = _hex_grid(h, w, 70 / mpp, 0.08, rng)
    a_pts = a_pts[(_lookup(fat, a_pts, factor) > 0.5) & (_lookup(tissue, a_pts, factor) > 0.5)]
    n_dust = int(rng.poisson(25 * h * w * mpp * mpp / 25e6)) if whole_slide else int(rng.poisson(0.3))
    d_pts = rng.uniform(0, 1, (n_dust, 2)) * [h, w]

    pts = np.concatenate([t_pts, f_pts, l_pts, a_pts, d_pts])
    kind = np.concatenate(
        [np.full(len(p), k, dtype=np.int8) for k, p in enumerate([t_pts, f_pts, l_pts, a_pts, d_pts])]
    )
    n, nt = len(pts), len(t_pts)
    is_t = kind == 0

    # HER2 membrane classes: slide mixture, re-weighted locally by the heterogeneity field, then fixed
    # up so that the whole section scores its category.
    membrane = np.zeros(n, dtype=np.int8)
    nuclear_pos = np.zeros(n, dtype=bool)
    if case.marker == "her2":
        mix = draw_membrane_mixture(case.her2, rng)
        s = _lookup(strength, t_pts, factor)[:, None] * rng.uniform(0.4, 0.9)
        weights = mix[None, :] * np.exp(s * (np.arange(5)[None, :] - 1.5))
        weights /= weights.sum(axis=1, keepdims=True)
        codes = (
            (rng.uniform(size=(nt, 1)) > np.cumsum(weights, axis=1)).sum(axis=1).clip(0, 4).astype(np.int8)
        )
        if glands is None:
            membrane[is_t] = enforce_her2_category(codes, case.her2, rng)
        else:  # gland cells may lie beyond the section's edge: the visible ones score the category
            seen = _visible(t_pts, h, w)
            codes[seen] = enforce_her2_category(codes[seen], case.her2, rng)
            membrane[is_t] = codes
    else:
        status = case.er if case.marker == "er" else case.pr
        frac = draw_receptor_fraction(status, rng)
        s = _lookup(strength, t_pts, factor)
        local = np.clip(frac * np.exp(0.6 * s), 0, 1) if 0 < frac < 0.9 else np.full(nt, frac)
        positive = rng.uniform(size=nt) < local
        seen = _visible(t_pts, h, w) if glands is not None else slice(None)
        positive[seen] = enforce_receptor_status(positive[seen], status, rng)
        nuclear_pos[is_t] = positive

    intensity = np.zeros(n, dtype=np.int8)
    completeness = np.zeros(n, dtype=np.float32)
    if case.marker == "her2":
        intensity = MEMBRANE_INTENSITY[membrane]
        incomplete = membrane == 1
        completeness[incomplete] = rng.uniform(0.15, 0.8, int(incomplete.sum()))
        complete = membrane >= 2
        completeness[complete] = rng.uniform(0.92, 1.0, int(complete.sum()))
    else:
        npos = int(nuclear_pos.sum())
        intensity[nuclear_pos] = rng.choice([1, 2, 3], size=npos, p=[0.3, 0.4, 0.3])

    cells = {
        "y": pts[:, 0].astype(np.float32),
        "x": pts[:, 1].astype(np.float32),
        "kind": kind,
        "variant": rng.integers(0, 1 << 16, n).astype(np.int32),
        "membrane": membrane,
        "intensity": intensity,
        "completeness": completeness,
        "arc_start": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        "nuclear_positive": nuclear_pos,
        "od_jitter": np.exp(rng.normal(0, 0.15, n)).astype(np.float32),
    }
    if glands is not None:
        _gland_membranes(cells, gcells, glands, nt, rng)
    return cells


def _visible(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Points (y, x) inside an h x w section."""
    return (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)


def _gland_membranes(
    cells: dict[str, np.ndarray],
    gcells: dict[str, np.ndarray],
    glands: dict[str, np.ndarray],
    nt: int,
    rng: np.random.Generator,
) -> None:
    """Add the columnar cells' geometry to ``cells`` (the first ``nt`` rows) and draw which complete
    membranes are basolateral (``PATTERN_U``: luminal side unstained; their completeness is the stained
    share of the outline)."""
    n = len(cells["y"])
    for key, value in gcells.items():
        if key in ("y", "x"):
            continue
        full = np.full(n, -1 if value.dtype.kind == "i" else 0, dtype=value.dtype)
        full[:nt] = value
        cells[key] = full
    u_share = rng.uniform(0.0, 0.6)
    complete = (cells["membrane"] >= 2) & (np.arange(n) < nt)
    u = complete & (rng.uniform(size=n) < u_share)
    cells["pattern"] = np.where(u, PATTERN_U, PATTERN_RING).astype(np.int8)
    g = cells["gland"][:nt]
    height = glands["height"][g]
    width = (2 * np.pi * (glands["radius"][g] + height / 2) + 4 * glands["half"][g]) / glands["n_cells"][g]
    apical = width / (2 * height + 2 * width)  # the luminal side's share of the outline
    cells["completeness"][:nt] = np.where(u[:nt], 1 - apical, cells["completeness"][:nt]).astype(np.float32)
    # A partial ring (incomplete class) that left exactly the luminal side unstained would be a
    # basolateral U, which the gastric rulebook counts as complete: turn such arcs half-way round, so
    # that partial rings lack some other part of the outline (outline positions run from the apical
    # side's corner, :func:`~her2score.data.synth.glands.render_glands`).
    part = (cells["membrane"][:nt] == 1) & (cells["completeness"][:nt] >= 0.5)
    start = cells["arc_start"][:nt] / (2 * np.pi)
    gap_from = np.mod(start + cells["completeness"][:nt], 1.0)  # the gap runs from here to the arc start
    gap_len = 1 - cells["completeness"][:nt]
    luminal_gap = part & (np.mod(0 - gap_from, 1.0) + apical <= gap_len)
    cells["arc_start"][:nt] = np.where(
        luminal_gap, np.mod(cells["arc_start"][:nt] + np.pi, 2 * np.pi), cells["arc_start"][:nt]
    ).astype(np.float32)


def cells_table(layout: Layout, offset: tuple[float, float] = (0.0, 0.0)) -> pd.DataFrame:
    """Per-cell truth as a DataFrame: tumour cells, fibroblasts and lymphocytes; x, y in level-0 px
    (minus ``offset`` (y, x)); ``membrane_class`` and ``cell_type`` as plain strings."""
    import pandas as pd

    c = layout.cells
    # Cells in the section only (gland cells may be drawn beyond its edge; all others lie inside).
    keep = (c["kind"] <= 2) & _visible(np.stack([c["y"], c["x"]], axis=1), layout.height, layout.width)
    kind = c["kind"][keep]
    extra = {}
    if "pattern" in c:  # glandular: ring or basolateral (U) membranes
        extra["membrane_pattern"] = np.asarray(PATTERNS, dtype=object)[c["pattern"][keep]]
    return pd.DataFrame(
        {
            "cell_id": np.arange(int(keep.sum()), dtype=np.int32),
            "x": c["x"][keep] - np.float32(offset[1]),
            "y": c["y"][keep] - np.float32(offset[0]),
            "cell_type": np.asarray(CELL_TYPES, dtype=object)[kind],
            "is_tumour": kind == 0,
            "intensity": c["intensity"][keep],
            "completeness": c["completeness"][keep],
            "membrane_class": np.asarray(MEMBRANE_CLASSES, dtype=object)[c["membrane"][keep]],
            "nuclear_positive": c["nuclear_positive"][keep],
            **extra,
        }
    )
