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

    try:
        return estimate_stain_vectors(rgb[::2, ::2] if min(rgb.shape[:2]) >= 256 else rgb)
    except ValueError:
        return None


def choose_stain_vectors(
    rgb: np.ndarray, mode: str = "auto", estimate: StainMatrix | None = None
) -> tuple[StainMatrix, str]:
    """H-DAB vectors for this image: a Macenko estimate when plausible, else the defaults.

    Plausible: hematoxylin within 25° and DAB within 25° of the published vectors, and the two at
    least 25° apart (an image with hardly any DAB gives a degenerate "second stain"). Returns the
    matrix and where it came from (``estimated`` or ``default``).
    """
    if mode == "default":
        return HDAB, "default"
    if mode != "auto":
        raise ConfigError(f"stain vectors must be 'auto' or 'default' (got {mode!r})")
    est = estimate if estimate is not None else macenko(rgb)
    if est is None:
        return HDAB, "default"
    h, d = est.vectors
    if _angle_deg(h, HEMATOXYLIN) < 25 and _angle_deg(d, DAB) < 25 and _angle_deg(h, d) >= 25:
        return StainMatrix(("hematoxylin", "dab"), (h, d)), "estimated"
    return HDAB, "default"


def looks_like_he(rgb: np.ndarray, tissue: np.ndarray, estimate: StainMatrix | None = None) -> bool:
    """True when the stain that is not hematoxylin is eosin-pink rather than DAB-brown.

    Two cues: most tissue pixels carry eosin in an H-E-DAB deconvolution, or the Macenko second
    stain is distinct from hematoxylin and green-dominant (eosin absorbs green, DAB most in blue).
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
    return bool(eosin_share > 0.6 or (distinct and green_dominant))
