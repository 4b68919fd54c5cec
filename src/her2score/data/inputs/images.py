"""Shared helpers for kinds whose items are RGB images held as uint8 tensors (N, 3, H, W)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: ImageNet statistics, for backbones with pretrained weights (they were trained on them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stack_images(images: dict[int, np.ndarray], size: int) -> tuple[Any, np.ndarray]:
    """``{position: HxWx3 uint8}`` -> (uint8 tensor (N, 3, size, size), sorted positions)."""
    import torch

    positions = np.array(sorted(images), dtype=np.int64)
    if not len(positions):
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), positions
    stack = np.stack([images[i] for i in positions])
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous(), positions


def image_statistics(images: Any, index: np.ndarray, pretrained: bool) -> dict[str, Any]:
    """Per-channel mean and std that normalise the model input.

    With pretrained weights, the statistics they were trained with (ImageNet). From scratch, those of
    the training images: low-resolution slides are mostly white glass, and centring them on ImageNet's
    mean leaves the faint stain differences that carry the label too small to learn from.
    """
    if pretrained or len(index) == 0:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "normalisation": "imagenet"}
    x = images[index].float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "normalisation": "training images",
    }


def to_model_input(
    images: Any, stats: dict[str, Any], device: Any, augment: Any = None, generator: Any = None
) -> Any:
    """uint8 batch -> float RGB in [0, 1], augmented when ``augment`` is given, normalised by ``stats``."""
    import torch

    from her2score.data.augment import augment_batch

    x = images.to(device, non_blocking=True).float().div_(255.0)
    if augment is not None:
        x = augment_batch(x, generator, augment)
    m = torch.as_tensor(stats["mean"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(stats["std"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def dihedral_views(x: Any) -> list[Any]:
    """The 8 flips and 90° rotations of a square batch (B, C, H, W); only the 2 flips of a non-square one.

    A slide has no canonical orientation, and averaging over these views is steadier than any one.
    """
    import torch

    if x.shape[-1] != x.shape[-2]:
        return [x, x.flip(-1)]
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def to_picture(image: Any) -> np.ndarray:
    """A (3, H, W) uint8 tensor as an (H, W, 3) array."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())
