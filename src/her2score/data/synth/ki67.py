"""Hard synthetic Ki-67 tiles: crowded, touching tumour nuclei, faint positives, lymphocytes (some of
them cycling, so Ki-67 positive) and fibroblasts, with per-nucleus truth.

Written independently of the ER/PR patch renderer (:mod:`her2score.data.synth.patches`) to check the
nuclear quantifier on what that renderer makes easy: nuclei placed on a jittered hexagonal lattice
closer than their diameters (a third or more of them touch or overlap), positive nuclei that kept
little hematoxylin, a faint class near the positive threshold, stain vectors that differ from the
reference ones, a blurred, noisy image. Truth: ``pct_positive`` over tumour nuclei, as a Ki-67
index is defined (lymphocytes and stroma excluded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    import pandas as pd

#: Reference optical-density vectors (Ruifrok and Johnston), perturbed per tile.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_DAB = np.array([0.268, 0.570, 0.776])
#: Mean nuclear DAB OD range per positive class: faint, moderate, strong.
KI67_DAB_OD = ((0.14, 0.28), (0.28, 0.6), (0.6, 1.1))
NUCLEUS_KINDS = ("tumour", "lymphocyte", "fibroblast")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def render_ki67_tile(
    positive_fraction: float,
    size: int = 768,
    mpp: float = 0.5,
    seed: int = 0,
    lymphocyte_fraction: float = 0.2,
    cycling_lymphocytes: float = 0.3,
    strong_od: tuple[float, float] | None = None,
    hematoxylin_scale: float = 1.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """An RGB uint8 Ki-67 IHC tile ``size`` px square at ``mpp`` µm/px and its per-nucleus truth.

    ``positive_fraction`` of tumour nuclei are positive (a third each faint, moderate, strong, on
    average); lymphocytes are ``lymphocyte_fraction`` of all nuclei, ``cycling_lymphocytes`` of them
    positive. Truth columns: ``x``, ``y`` (px), ``kind`` (tumour / lymphocyte / fibroblast),
    ``positive``, ``intensity`` (0-3), ``dab_od``.

    Optional conditions for robustness sweeps (the defaults render the benchmark's tiles unchanged):
    ``strong_od`` the mean DAB OD range of the strong class (e.g. ``(1.2, 2.0)``: near-black positives
    whose hematoxylin is hidden; default :data:`KI67_DAB_OD`'s), ``hematoxylin_scale`` a factor on all
    counterstain (e.g. 0.4: a weak hematoxylin). ``mpp`` scales every size in µm (0.25: a 40x scan).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    um = size * mpp
    # Tumour nests: smoothed noise thresholded to ~55 % of the area; stroma around them.
    noise = ndi.gaussian_filter(rng.normal(size=(size // 8 + 1, size // 8 + 1)), 60 / (8 * mpp))
    nest_coarse = noise > np.quantile(noise, 0.45)
    nest = ndi.zoom(nest_coarse.astype(np.float32), size / nest_coarse.shape[0], order=1)[:size, :size] > 0.5

    rows = []
    spacing = rng.uniform(9.5, 12.0)  # µm between lattice points; tumour nuclei are 8-12.4 µm across
    for j, y in enumerate(np.arange(spacing / 2, um, spacing * 0.866)):
        for x in np.arange(spacing / 2 + (j % 2) * spacing / 2, um, spacing):
            px, py = (x + rng.normal(0, 1.2)) / mpp, (y + rng.normal(0, 1.2)) / mpp
            if not (0 <= px < size and 0 <= py < size):
                continue
            if nest[int(py), int(px)]:
                kind = "lymphocyte" if rng.uniform() < lymphocyte_fraction * 0.4 else "tumour"
            elif rng.uniform() < 0.45:
                kind = "lymphocyte" if rng.uniform() < lymphocyte_fraction * 2.2 else "fibroblast"
            else:
                continue
            rows.append((px, py, kind))
    n = len(rows)
    xs = np.array([r[0] for r in rows])
    ys = np.array([r[1] for r in rows])
    kinds = np.array([r[2] for r in rows], dtype=object)
    tumour = kinds == "tumour"
    lymph = kinds == "lymphocyte"
    # Shapes (µm): tumour 4-6 µm radius, slightly elliptical; lymphocytes round ~2.7 µm; fibroblasts
    # spindles 1.3 x 6 µm.
    major = np.where(tumour, rng.uniform(4.0, 6.2, n), np.where(lymph, rng.uniform(2.4, 3.0, n), 6.0))
    minor = np.where(
        tumour, major * rng.uniform(0.72, 0.95, n), np.where(lymph, major * rng.uniform(0.9, 1.0, n), 1.4)
    )
    theta = rng.uniform(0, np.pi, n)
    positive = np.zeros(n, dtype=bool)
    positive[tumour] = rng.uniform(size=int(tumour.sum())) < positive_fraction
    positive[lymph] = rng.uniform(size=int(lymph.sum())) < cycling_lymphocytes
    intensity = np.where(positive, rng.integers(1, 4, n), 0).astype(np.int8)
    classes = (*KI67_DAB_OD[:2], tuple(strong_od) if strong_od is not None else KI67_DAB_OD[2])
    lo = np.array([0.0] + [r[0] for r in classes])
    hi = np.array([0.0] + [r[1] for r in classes])
    dab_od = lo[intensity] + rng.uniform(size=n) * (hi - lo)[intensity]
    hema = np.where(tumour, rng.uniform(0.3, 0.55, n), np.where(lymph, rng.uniform(0.75, 1.05, n), 0.5))
    # A positive nucleus keeps less hematoxylin the more DAB it holds (DAB masks the counterstain).
    hema = hema * np.where(positive, np.clip(1.0 - 0.7 * dab_od, 0.2, 0.9), 1.0)

    h_map = np.zeros((size, size), np.float32)
    d_map = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = (
        1.0 + 0.25 * ndi.gaussian_filter(rng.normal(size=(size, size)), 0.6 / mpp).astype(np.float32) * 4
    )
    for i in range(n):
        r = int(np.ceil(major[i] / mpp)) + 2
        y0, y1 = max(0, int(ys[i]) - r), min(size, int(ys[i]) + r + 1)
        x0, x1 = max(0, int(xs[i]) - r), min(size, int(xs[i]) + r + 1)
        dy, dx = yy[y0:y1, x0:x1] - ys[i], xx[y0:y1, x0:x1] - xs[i]
        c, s = np.cos(theta[i]), np.sin(theta[i])
        u, v = (dx * c + dy * s) * mpp / major[i], (-dx * s + dy * c) * mpp / minor[i]
        inside = 1.0 / (1.0 + np.exp((np.sqrt(u * u + v * v) - 1.0) * major[i] / 0.35))
        tex = texture[y0:y1, x0:x1] if tumour[i] else 1.0
        np.maximum(h_map[y0:y1, x0:x1], inside * hema[i] * tex, out=h_map[y0:y1, x0:x1])
        np.maximum(d_map[y0:y1, x0:x1], inside * dab_od[i] * tex, out=d_map[y0:y1, x0:x1])
    # Stroma and cytoplasm: faint counterstain, fibres; a little non-specific DAB.
    fibres = ndi.gaussian_filter(rng.normal(size=(size, size)), (0.8 / mpp, 4 / mpp)).astype(np.float32)
    h_map += np.where(nest, 0.07, 0.05 + 0.25 * np.clip(fibres * 8, 0, 0.2)).astype(np.float32)
    d_map += rng.uniform(0.0, 0.025) + 0.01 * np.clip(fibres * 8, 0, 1)
    h_map = ndi.gaussian_filter(h_map * np.float32(hematoxylin_scale), 0.45 / mpp)
    d_map = ndi.gaussian_filter(d_map, 0.45 / mpp)
    h_vec = _unit(_HEMATOXYLIN + rng.normal(0, 0.04, 3))
    d_vec = _unit(_DAB + rng.normal(0, 0.04, 3))
    od = h_map[..., None] * h_vec + d_map[..., None] * d_vec
    rgb = 245.0 * np.exp(-od * np.log(10)) + rng.normal(0, 2.5, (size, size, 3))
    truth = pd.DataFrame(
        {
            "x": xs.astype(np.float32),
            "y": ys.astype(np.float32),
            "kind": pd.Categorical(kinds, categories=NUCLEUS_KINDS),
            "positive": positive,
            "intensity": intensity,
            "dab_od": dab_od.astype(np.float32),
        }
    )
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def true_ki67_index(truth: pd.DataFrame) -> float:
    """Percent positive over the tumour nuclei of a tile's truth."""
    tumour = truth[truth["kind"] == "tumour"]
    return 100.0 * float(tumour["positive"].mean()) if len(tumour) else 0.0


def true_all_nuclei_index(truth: pd.DataFrame) -> float:
    """Percent positive over every nucleus of a tile's truth (tumour, lymphocytes, fibroblasts): what an
    immunofluorescence truth labelling every cell (DAPI) would give."""
    return 100.0 * float(truth["positive"].mean()) if len(truth) else 0.0
