"""Stain separation (colour deconvolution), stain vectors and H&E detection (:mod:`her2score.stain.detect`).

The membrane quantifier is :mod:`her2score.quantify`.
"""

from her2score.stain.deconvolution import (
    HDAB,
    HE,
    StainMatrix,
    combine_stains,
    estimate_stain_vectors,
    od_to_rgb,
    rgb_to_od,
    separate_stains,
)

__all__ = [
    "HDAB",
    "HE",
    "StainMatrix",
    "combine_stains",
    "estimate_stain_vectors",
    "od_to_rgb",
    "rgb_to_od",
    "separate_stains",
]
