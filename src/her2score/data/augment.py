"""Augmentations suited to slides, as torch ops on batches of RGB in [0, 1] (B, 3, H, W).

Slides have no canonical orientation (flips, 90° rotations), sit slightly differently on the glass
(small affine, white fill), and vary in staining between labs (jitter of hematoxylin and DAB
concentrations in optical-density space), focus (blur) and illumination (brightness). Every draw uses
the given ``torch.Generator`` so that an epoch is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class AugmentConfig:
    """Augmentations for slide images (all torch ops on batches; 0 switches one off)."""

    flip: bool = True
    rot90: bool = True
    affine_degrees: float = 10.0
    affine_scale: float = 0.08
    affine_translate: float = 0.04
    stain_jitter: float = 0.05  # relative scale jitter of H and DAB concentrations (HED space)
    stain_shift: float = 0.02  # additive OD shift of hematoxylin and residual (DAB is only scaled)
    blur_prob: float = 0.2
    blur_sigma: float = 1.0
    brightness: float = 0.03  # illumination; larger factors shift DAB optical density like staining does
    crop: int = 0  # train on random windows of this many px of the input (finer µm/px); 0: whole input


_GLASS = 0.86  # mean RGB above this is background (glass or padding), below it tissue


def _uniform(gen: Any, n: int, low: float, high: float, device: Any) -> Any:
    import torch

    return (torch.rand(n, generator=gen) * (high - low) + low).to(device)


def flips_and_rot90(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """Random horizontal/vertical flips and 90° rotations, per image (one copy of each image)."""
    import torch

    n = x.shape[0]
    no = torch.zeros(n, dtype=torch.bool)
    flip_h = torch.rand(n, generator=gen) < 0.5 if cfg.flip else no
    flip_v = torch.rand(n, generator=gen) < 0.5 if cfg.flip else no
    square = x.shape[-1] == x.shape[-2]
    turns = torch.randint(0, 4, (n,), generator=gen) if cfg.rot90 and square else no.long()
    if not (flip_h.any() or flip_v.any() or turns.any()):
        return x
    out = torch.empty_like(x)
    code = flip_h.long() * 8 + flip_v.long() * 4 + turns  # images sharing a transform move together
    for c in code.unique().tolist():
        sel = (code == c).to(x.device)
        xs = x[sel]
        if c & 8:
            xs = xs.flip(-1)
        if c & 4:
            xs = xs.flip(-2)
        out[sel] = torch.rot90(xs, c & 3, dims=(-2, -1)) if c & 3 else xs
    return out


def small_affine(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """Small rotation, scale and shift; uncovered corners become white background.

    Hand-written rather than torchvision's ``affine``: one ``grid_sample`` for the whole batch with a
    draw per image, where torchvision applies one transform per call (25 vs 27 ms on 8 x 192², measured).
    """
    import torch
    import torch.nn.functional as F

    if not (cfg.affine_degrees or cfg.affine_scale or cfg.affine_translate):
        return x
    n = x.shape[0]
    angle = _uniform(gen, n, -cfg.affine_degrees, cfg.affine_degrees, x.device) * (math.pi / 180)
    scale = _uniform(gen, n, 1 - cfg.affine_scale, 1 + cfg.affine_scale, x.device)
    tx = _uniform(gen, n, -cfg.affine_translate, cfg.affine_translate, x.device) * 2
    ty = _uniform(gen, n, -cfg.affine_translate, cfg.affine_translate, x.device) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample "ink" (1 - x) with zero padding so that the outside reads as white glass
    return 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stain_jitter(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """Scale hematoxylin, DAB and residual concentrations and shift hematoxylin and residual (OD space).

    DAB is only scaled, never shifted: its amount over the tissue *is* the HER2 signal at low
    resolution, and an additive shift the size of the 0 / 1+ difference would blur the labels.
    Deconvolution, jitter and reconvolution are linear in optical density, so they fold into one 3x3
    matrix and one offset per image: od' = od · M⁻¹ diag(alpha) M + tissue · (beta M).
    """
    import torch

    from her2score.optics import rgb_to_od
    from her2score.stain.deconvolution import HDAB

    if not (cfg.stain_jitter or cfg.stain_shift):
        return x
    n = x.shape[0]
    m = torch.as_tensor(HDAB.matrix(), dtype=torch.float32)  # stains x RGB
    m_inv = torch.linalg.inv(m)
    alpha = _uniform(gen, n * 3, 1 - cfg.stain_jitter, 1 + cfg.stain_jitter, "cpu").view(n, 3)
    beta = _uniform(gen, n * 3, -cfg.stain_shift, cfg.stain_shift, "cpu").view(n, 3)
    beta = beta * torch.tensor([1.0, 0.0, 1.0])  # no additive DAB
    mix = (m_inv[None] * alpha[:, None, :]) @ m  # (n, 3 RGB in, 3 RGB out)
    offset = (beta @ m).to(x.device)[:, :, None]
    ln10 = math.log(10.0)
    od = rgb_to_od(x.float() * 255).flatten(2)  # n, 3, HW
    tissue = (od.sum(1, keepdim=True) > 0.05).float()  # leave glass white
    od = torch.bmm(mix.transpose(1, 2).to(x.device), od) + offset * tissue
    out = torch.exp(od.mul_(-ln10)).view(x.shape)
    return out.clamp_(0, 1).to(x.dtype)


def gaussian_blur(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """Blur a random subset of images (out-of-focus scans), one sigma per batch (torchvision's blur:
    18 ms vs 58 ms for our own separable convolution on 8 x 192² images, measured)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    if cfg.blur_prob <= 0 or cfg.blur_sigma <= 0:
        return x
    sel = (torch.rand(x.shape[0], generator=gen) < cfg.blur_prob).to(x.device)
    sigma = float(_uniform(gen, 1, 0.3, cfg.blur_sigma, "cpu")[0])
    if not sel.any():
        return x
    size = 2 * max(1, math.ceil(2.5 * sigma)) + 1
    out = x.clone()
    out[sel] = TF.gaussian_blur(x[sel], kernel_size=[size, size], sigma=[sigma, sigma])
    return out


def brightness(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """Multiply each image by a factor near 1 (illumination)."""
    if cfg.brightness <= 0:
        return x
    f = _uniform(gen, x.shape[0], 1 - cfg.brightness, 1 + cfg.brightness, x.device).view(-1, 1, 1, 1)
    return (x * f).clamp(0, 1)


def random_crop(x: Any, gen: Any, cfg: AugmentConfig, tries: int = 8) -> Any:
    """A random ``cfg.crop`` px square window of each image, mostly tissue (0: the whole image).

    Training on windows of a larger whole-slide input sees the tissue at a finer µm/px for the same
    compute and never the same view twice; prediction then reads the whole input (the networks pool
    globally, so they take any size). A window is redrawn, up to ``tries`` times, while less than
    half of it is tissue (pixels darker than glass), and the most tissue-rich draw is kept.
    """
    import torch

    size = int(cfg.crop)
    n, _, h, w = x.shape
    if not size or size >= min(h, w):
        return x
    tissue = (x.mean(1) < _GLASS).float()
    out = []
    for i in range(n):
        best, best_share = None, -1.0
        for _ in range(tries):
            y0 = int(torch.randint(0, h - size + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, w - size + 1, (1,), generator=gen))
            share = float(tissue[i, y0 : y0 + size, x0 : x0 + size].mean())
            if share > best_share:
                best, best_share = (y0, x0), share
            if share >= 0.5:
                break
        y0, x0 = best
        out.append(x[i, :, y0 : y0 + size, x0 : x0 + size])
    return torch.stack(out)


def augment_batch(x: Any, gen: Any, cfg: AugmentConfig) -> Any:
    """All augmentations in a fixed order; ``x`` is float RGB in [0, 1], (B, 3, H, W)."""
    x = random_crop(x, gen, cfg)
    x = flips_and_rot90(x, gen, cfg)
    x = small_affine(x, gen, cfg)
    x = stain_jitter(x, gen, cfg)
    x = gaussian_blur(x, gen, cfg)
    return brightness(x, gen, cfg)
