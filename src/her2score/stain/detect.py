"""Which stain an image carries: H-DAB stain vectors for an IHC image, and H&E passed by mistake.

:func:`choose_stain_vectors` picks per-image Macenko vectors when they are plausible for H-DAB, else the
published defaults; :func:`looks_like_he` tells an H&E image (eosin-pink) from an HER2 IHC (DAB-brown),
so that a quantifier or a model for IHC refuses it with a clear message.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from her2score.errors import ConfigError
from her2score.stain.deconvolution import DAB, EOSIN, HDAB, HEMATOXYLIN, StainMatrix, rgb_to_od


def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _angle_deg(a: Any, b: Any) -> float:
    return math.degrees(math.acos(float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def macenko(rgb: np.ndarray) -> StainMatrix | None:
    """Macenko stain vectors of an image (on every other pixel: as good, 4x faster); None if unstained."""
    from her2score.stain.deconvolution import estimate_stain_vectors

    try:  # OD above 2.5 is black debris, pen or a fold, not a stain: left out
        return estimate_stain_vectors(rgb[::2, ::2] if min(rgb.shape[:2]) >= 256 else rgb, od_max=2.5)
    except ValueError:
        return None


#: Sanity check of a per-image Macenko estimate for H-DAB: each vector within this angle (degrees) of
#: its published reference, and the two at least this far apart (with hardly any DAB, the "second
#: stain" is a hematoxylin variant).
MAX_ANGLE_TO_REFERENCE_DEG = 25.0
MIN_ANGLE_BETWEEN_STAINS_DEG = 25.0
#: ... and enough stained pixels to estimate from: at least this fraction of the image with optical
#: density above 0.15 in every channel (Macenko's pixels), and at least this fraction of those where
#: the estimated DAB outweighs hematoxylin (the DAB end of the angle distribution is its 1st
#: percentile: with fewer DAB pixels it is noise).
MIN_STAINED_FRACTION = 0.02
MIN_DAB_FRACTION = 0.02


def check_stain_estimate(rgb: np.ndarray, est: StainMatrix | None) -> str:
    """Why a Macenko estimate is not plausible for H-DAB (``""``: it is); see the constants above."""
    if est is None:
        return "too few stained pixels"
    h, d = est.vectors
    angle_h, angle_d, apart = _angle_deg(h, HEMATOXYLIN), _angle_deg(d, DAB), _angle_deg(h, d)
    if angle_h >= MAX_ANGLE_TO_REFERENCE_DEG:
        return f"hematoxylin {angle_h:.0f}° from the reference"
    if angle_d >= MAX_ANGLE_TO_REFERENCE_DEG:
        return f"DAB {angle_d:.0f}° from the reference"
    if apart < MIN_ANGLE_BETWEEN_STAINS_DEG:
        return f"stains only {apart:.0f}° apart"
    od = rgb_to_od(rgb[::4, ::4] if min(rgb.shape[:2]) >= 512 else rgb).reshape(-1, 3)
    stained = od[np.all(od > 0.15, axis=1)]
    if stained.shape[0] < max(100, MIN_STAINED_FRACTION * od.shape[0]):
        return f"too few stained pixels ({stained.shape[0] / max(od.shape[0], 1):.1%})"
    conc = stained @ np.linalg.inv(np.stack([_unit(h), _unit(d), _unit(np.cross(h, d))]))
    dab_share = float(np.mean(conc[:, 1] > conc[:, 0]))
    if dab_share < MIN_DAB_FRACTION:
        return f"too little DAB to estimate its vector ({dab_share:.1%} of stained pixels)"
    return ""


def choose_stain_vectors(
    rgb: np.ndarray, mode: str = "auto", estimate: StainMatrix | None = None
) -> tuple[StainMatrix, str]:
    """H-DAB vectors for this image: a Macenko estimate when plausible, else the published defaults.

    Plausible by :func:`check_stain_estimate` (angles to the reference vectors and between the two,
    enough stained and enough DAB pixels). Returns the matrix and where it came from: ``estimated``,
    ``default`` (asked for), or ``default (<why the estimate was refused>)``.
    """
    if mode == "default":
        return HDAB, "default"
    if mode != "auto":
        raise ConfigError(f"stain vectors must be 'auto' or 'default' (got {mode!r})")
    est = estimate if estimate is not None else macenko(rgb)
    why = check_stain_estimate(rgb, est)
    if why:
        return HDAB, f"default ({why})"
    h, d = est.vectors
    return StainMatrix(("hematoxylin", "dab"), (h, d)), "estimated"


#: The Macenko cue of :func:`looks_like_he` also needs this share of the tissue pixels to carry eosin.
#: Measured on the real images of the test data: the 21 HER2 IHC patches (BCI, MIST) 0.000-0.003, the
#: H&E patches this cue catches 0.30-0.39 (the MIST and other H&E tiles, 0.65-0.99, pass the first cue);
#: a DAB-free IHC (a Ki-67 or ER tile with no positive nucleus, a HER2-0) has no second stain, and its
#: Macenko "second stain" is then a hematoxylin variant or the background's tint, which can be green-
#: dominant and 18-40° from the reference hematoxylin: without this floor such a tile was refused.
MACENKO_MIN_EOSIN_SHARE = 0.2


def looks_like_he(
    rgb: np.ndarray,
    tissue: np.ndarray,
    estimate: StainMatrix | None = None,
    min_eosin_share: float = MACENKO_MIN_EOSIN_SHARE,
) -> bool:
    """True when the stain that is not hematoxylin is eosin-pink rather than DAB-brown.

    Two cues: most tissue pixels carry eosin in an H-E-DAB deconvolution, or the Macenko second
    stain is distinct from hematoxylin and green-dominant (eosin absorbs green, DAB most in blue) while
    some eosin is there (``min_eosin_share`` of the tissue, :data:`MACENKO_MIN_EOSIN_SHARE`: a
    stain-free background tint is not eosin). The floor leans towards IHC, right where an IHC is
    expected (refusing a real IHC is the worse mistake); where H&E is expected, pass 0 so that a pale
    H&E with little eosin still counts as H&E (:func:`her2score.engine.predict.stain_status`).
    """
    od = rgb_to_od(rgb)[tissue]
    if od.shape[0] < 500:
        return False
    m = np.stack([_unit(HEMATOXYLIN), _unit(EOSIN), _unit(DAB)])
    conc = od[:: max(1, od.shape[0] // 100_000)] @ np.linalg.inv(m).astype(np.float32)
    eosin_share = float(np.mean(conc[:, 1] > 0.05))
    est = estimate if estimate is not None else macenko(rgb)
    if est is None:
        return eosin_share > 0.6
    other = np.asarray(est.vectors[1])
    green_over_blue = float(other[1] / max(other[2], 1e-6))
    # Eosin absorbs green most; a second stain absorbing red most is ink or a blue dye, not eosin.
    green_dominant = other[1] >= other[0] and green_over_blue > 1.2
    # A second stain almost parallel to hematoxylin means there is only one stain (a HER2-0 IHC).
    # The Macenko cue only counts when its second stain is well apart from hematoxylin: in a pale
    # HER2-0 IHC it is a hematoxylin variant. Refusing a real IHC is the worse mistake, so pale,
    # ambiguous images pass (some oddly stained H&E with little eosin then pass too).
    distinct = _angle_deg(other, HEMATOXYLIN) >= 18.0
    return bool(eosin_share > 0.6 or (distinct and green_dominant and eosin_share >= min_eosin_share))
