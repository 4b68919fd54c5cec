"""Model inputs by kind: the engine asks the model's registry entry what it needs and builds it here.

``lowres``: one whole-tissue image per slide, prepared once (cached on disk) and held in memory as a
uint8 tensor, so an epoch costs only augmentation and the model step. Other kinds (tile-feature bags
for MIL, H&E/IHC pairs) plug in here under their own ``input_kind``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2score.data.lowres import Failure, LowResParams, prepare_slides
from her2score.errors import ConfigError


@dataclass
class SlideInputs:
    """Prepared inputs of the slides that could be read; ``positions`` index the original slide list."""

    kind: str
    images: Any  # torch.uint8 (N, 3, H, W) for lowres
    positions: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)

    def rgb(self, i: int) -> np.ndarray:
        """Image ``i`` as an RGB uint8 array (for heatmaps)."""
        return self.images[i].permute(1, 2, 0).numpy()


def build_inputs(
    kind: str,
    slides: list[str | Path],
    params: LowResParams,
    cache_dir: str | Path | None,
    slide_mpps: list[float | None] | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> SlideInputs:
    """Prepare the inputs a model of ``kind`` consumes; unreadable slides go to ``failures``."""
    import torch

    if kind != "lowres":
        raise ConfigError(f"input kind {kind!r} is not available in this version (only 'lowres')")
    images, failures = prepare_slides(slides, params, cache_dir, slide_mpps, workers=workers, quiet=quiet)
    positions = np.array(sorted(images), dtype=np.int64)
    if len(positions):
        stack = np.stack([images[i] for i in positions])
        tensor = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
    else:
        tensor = torch.zeros((0, 3, params.size, params.size), dtype=torch.uint8)
    return SlideInputs(kind, tensor, positions, failures)


def to_model_input(
    images: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: Any,
    augment: Any = None,
    generator: Any = None,
) -> Any:
    """uint8 batch -> float, augmented when ``augment`` (an ``AugmentConfig``) is given, normalised."""
    import torch

    from her2score.engine.augment import augment_batch

    x = images.to(device, non_blocking=True).float().div_(255.0)
    if augment is not None:
        x = augment_batch(x, generator, augment)
    m = torch.as_tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def epoch_order(
    labels: np.ndarray, generator: Any, balanced: bool, num_classes: int
) -> Iterator[int]:  # pragma: no cover - thin
    """Sample order for one epoch: a shuffle, or class-balanced draws with replacement."""
    import torch

    n = len(labels)
    if not balanced:
        return iter(torch.randperm(n, generator=generator).tolist())
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = 1.0 / np.maximum(counts[labels], 1)
    draws = torch.multinomial(torch.as_tensor(weights), n, replacement=True, generator=generator)
    return iter(draws.tolist())
