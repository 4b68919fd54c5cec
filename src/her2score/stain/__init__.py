"""Stain separation (colour deconvolution) and the training-free ASCO/CAP membrane quantifier."""

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
