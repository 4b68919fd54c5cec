"""Optical-density colour deconvolution (Ruifrok & Johnston, 2001) for H-DAB and H&E.

Each stain is a unit vector in RGB optical-density space; the image's OD is projected on the inverse
of the stain matrix to give one concentration map per stain (in OD units, ≥ 0). Defaults are the
published Ruifrok-Johnston vectors, which are also what scikit-image uses; pass your own for a lab's
stains (e.g. from ``estimate_stain_vectors``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Default vectors (rows: stains; columns: R, G, B optical density), Ruifrok & Johnston 2001.
HEMATOXYLIN = (0.650, 0.704, 0.286)
EOSIN = (0.072, 0.990, 0.105)
DAB = (0.268, 0.570, 0.776)

#: Intensity of bare glass (0-255), the reference of optical density when an image's own is unknown.
BACKGROUND = 255.0
#: The darkest a channel of bare glass (background) can be, 0-255: a brighter pixel may be glass, a
#: darker one is not. Scanners' glass reads 230-255; 200 leaves room for a yellowish or grey scan.
GLASS_MIN = 200.0


@dataclass(frozen=True)
class StainMatrix:
    """Named stain vectors; a third, residual vector is completed by a cross product when absent."""

    names: tuple[str, ...]
    vectors: tuple[tuple[float, float, float], ...]

    def matrix(self) -> np.ndarray:
        """3x3 matrix with unit-length rows (the residual row completed when only two stains)."""
        rows = [np.asarray(v, dtype=np.float64) for v in self.vectors]
        rows = [r / np.linalg.norm(r) for r in rows]
        if len(rows) == 2:
            third = np.cross(rows[0], rows[1])
            rows.append(third / np.linalg.norm(third))
        return np.stack(rows)


HDAB = StainMatrix(("hematoxylin", "dab"), (HEMATOXYLIN, DAB))
HE = StainMatrix(("hematoxylin", "eosin"), (HEMATOXYLIN, EOSIN))
STAINS = {"hdab": HDAB, "he": HE}


def rgb_to_od(rgb: np.ndarray, background: float | np.ndarray = BACKGROUND) -> np.ndarray:
    """RGB uint8 → optical density, float32, ``-log10(I / I0)`` clipped at 0.

    ``background`` (I0) is the intensity of glass: one value, or one per channel (an image's own
    white point, so that a scanner's grey or yellowish glass reads as zero density).

    The one optical-density function of her2score: tissue detection, stain separation and the
    quantifier all use it.
    """
    rgb = np.asarray(rgb)
    background = np.asarray(background, dtype=np.float32)
    if rgb.dtype == np.uint8:
        # uint8 has 256 values: a lookup table (per channel) gives the same float32 values as the
        # formula, 1.7x faster (24 vs 42 ms on 2048x1536 RGB with a per-channel white, measured).
        levels = np.arange(256, dtype=np.float32)
        if background.ndim == 0:
            return np.take(_od_formula(levels, background), rgb, mode="clip")
        if rgb.ndim >= 1 and background.shape == (rgb.shape[-1],):
            table = _od_formula(levels[:, None], background)
            od = np.empty(rgb.shape, np.float32)
            for c in range(rgb.shape[-1]):
                np.take(table[:, c], rgb[..., c], out=od[..., c], mode="clip")
            return od
    return _od_formula(rgb.astype(np.float32, copy=False), background)


def _od_formula(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    od = -np.log10(np.maximum(rgb, np.float32(1.0)) / background)
    return np.maximum(od, np.float32(0.0), out=od)


def od_to_rgb(od: np.ndarray, background: float = BACKGROUND) -> np.ndarray:
    """Optical density → RGB uint8."""
    rgb = background * np.power(10.0, -np.asarray(od, dtype=np.float32))
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def separate_stains(rgb: np.ndarray, stains: StainMatrix | str = "hdab") -> dict[str, np.ndarray]:
    """Split an RGB image into per-stain concentration maps (float32, OD units, ≥ 0).

    Returns a dict keyed by stain name (e.g. ``hematoxylin``, ``dab``) plus ``residual`` for the
    third component, which is large where the colour fits neither stain (pen ink, dust).
    """
    matrix = STAINS[stains] if isinstance(stains, str) else stains
    m = matrix.matrix()
    inv = np.linalg.inv(m).astype(np.float32)
    od = rgb_to_od(np.asarray(rgb)[..., :3])  # an alpha channel, if any, carries no stain
    conc = od.reshape(-1, 3) @ inv
    conc = conc.reshape(*od.shape[:-1], 3)
    names = (*matrix.names, "residual") if len(matrix.names) == 2 else matrix.names
    out = {}
    for i, name in enumerate(names):
        c = conc[..., i]
        out[name] = c if name == "residual" else np.maximum(c, 0.0)
    return out


def combine_stains(concentrations: dict[str, np.ndarray], stains: StainMatrix | str = "hdab") -> np.ndarray:
    """Render concentration maps back to RGB (inverse of :func:`separate_stains`)."""
    matrix = STAINS[stains] if isinstance(stains, str) else stains
    m = matrix.matrix()
    names = (*matrix.names, "residual") if len(matrix.names) == 2 else matrix.names
    first = concentrations[matrix.names[0]]
    stack = np.stack([concentrations.get(n, np.zeros_like(first)) for n in names], axis=-1)
    od = stack.reshape(-1, 3) @ m.astype(np.float32)
    return od_to_rgb(od.reshape(*first.shape, 3))


def estimate_stain_vectors(rgb: np.ndarray, od_threshold: float = 0.15, alpha: float = 1.0) -> StainMatrix:
    """Estimate two stain vectors from an image (Macenko et al., 2009).

    Useful to adapt the defaults to a lab's staining. The first returned stain is the one closer to
    hematoxylin, the second the other (DAB or eosin).
    """
    od = rgb_to_od(np.asarray(rgb)[..., :3]).reshape(-1, 3)
    od = od[np.all(od > od_threshold, axis=1)]
    if od.shape[0] < 100:
        raise ValueError("too few stained pixels to estimate stain vectors")
    _, eigvecs = np.linalg.eigh(np.cov(od.T))
    plane = eigvecs[:, 1:3]
    proj = od @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = (v if v.sum() >= 0 else -v for v in (v1, v2))
    v1, v2 = np.abs(v1) / np.linalg.norm(v1), np.abs(v2) / np.linalg.norm(v2)
    h = np.asarray(HEMATOXYLIN) / np.linalg.norm(HEMATOXYLIN)
    if np.dot(v2, h) > np.dot(v1, h):
        v1, v2 = v2, v1
    return StainMatrix(("hematoxylin", "other"), (tuple(v1), tuple(v2)))
