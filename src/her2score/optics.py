"""Optical density: the one conversion between RGB intensity and absorbed light, used by tissue
detection (:mod:`her2score.slide`), stain separation (:mod:`her2score.stain`) and the quantifier.

It sits below both so that reading slides never depends on stain code.
"""

from __future__ import annotations

import numpy as np

#: Intensity of bare glass (0-255), the reference of optical density when an image's own is unknown.
BACKGROUND = 255.0
#: The darkest a channel of bare glass (background) can be, 0-255: a brighter pixel may be glass, a
#: darker one is not. Scanners' glass reads 230-255; 200 leaves room for a yellowish or grey scan.
GLASS_MIN = 200.0


def rgb_to_od(rgb: np.ndarray, background: float | np.ndarray = BACKGROUND) -> np.ndarray:
    """RGB uint8 → optical density, float32, ``-log10(I / I0)`` clipped at 0.

    ``background`` (I0) is the intensity of glass: one value, or one per channel (an image's own
    white point, so that a scanner's grey or yellowish glass reads as zero density).

    The one optical-density function of her2score: tissue detection, stain separation and the
    quantifier all use it. A torch tensor (any float range 0-255, any device) is converted with torch
    ops and stays a tensor (the models' stain features and the stain augmentation).
    """
    if type(rgb).__module__.startswith("torch"):
        import torch

        i0 = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
        return (-torch.log10(torch.clamp(rgb, min=1.0) / i0)).clamp_min(0)
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
