"""Tile encoders: uint8 RGB tiles (B, H, W, 3) in, one feature vector per tile (B, D) float32 out.

* :class:`StainEncoder` (``stain``): hematoxylin and DAB optical-density statistics per tile (mean,
  quantiles, histogram over the tissue pixels) and the tile's tissue fraction; no network, 29 numbers.
* :class:`TimmEncoder` (``timm:NAME``): any timm architecture's pooled features (``num_classes=0``),
  ImageNet normalisation, random initialisation (seeded) or weights from a local file: never downloaded.

Every encoder has a ``name`` (written into feature files), a ``dim`` and a ``key`` that changes whenever
its features would (the weights file's content, the seed, the statistics' version): the feature cache
is keyed by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from her2score.errors import ConfigError
from her2score.optics import rgb_to_od
from her2score.stain.deconvolution import separate_stains

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TileEncoder(Protocol):
    """What the extractor needs from an encoder."""

    name: str
    dim: int
    key: str

    def __call__(self, tiles: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, dim) float32
        ...


class StainEncoder:
    """Per tile: tissue fraction, then for hematoxylin and DAB the mean, the 10/25/50/75/90th
    percentiles and an 8-bin histogram (fractions of tissue pixels) of the stain's optical density.

    Tissue is a pixel whose summed optical density exceeds ``tissue_od``; ``stride`` subsamples pixels
    (2: every other row and column), which changes the statistics little and costs a quarter.
    """

    name = "stain"
    QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
    #: Bin edges in OD units: faint (<0.1) to very dark (>1.5) staining.
    EDGES = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
    VERSION = 1

    def __init__(self, stride: int = 2, tissue_od: float = 0.15) -> None:
        self.stride = int(stride)
        self.tissue_od = float(tissue_od)
        self.dim = 1 + 2 * (1 + len(self.QUANTILES) + len(self.EDGES) + 1)
        self.key = f"stain-v{self.VERSION}-s{self.stride}-t{self.tissue_od:g}"

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles)[:, :: self.stride, :: self.stride, :3]
        b = tiles.shape[0]
        tissue = (rgb_to_od(tiles).sum(-1) > self.tissue_od).reshape(b, -1)
        stains = separate_stains(tiles, "hdab")
        count = tissue.sum(1)
        out = np.zeros((b, self.dim), dtype=np.float32)
        out[:, 0] = count / max(tissue.shape[1], 1)
        n_bins = len(self.EDGES) + 1
        col = 1
        for name in ("hematoxylin", "dab"):
            od = stains[name].reshape(b, -1)
            bins = np.digitize(od, self.EDGES) + n_bins * np.arange(b)[:, None]
            hist = np.bincount(bins[tissue], minlength=b * n_bins).reshape(b, n_bins)
            for i in np.flatnonzero(count):
                values = od[i][tissue[i]]
                out[i, col] = values.mean()
                out[i, col + 1 : col + 1 + len(self.QUANTILES)] = np.quantile(values, self.QUANTILES)
            start = col + 1 + len(self.QUANTILES)
            out[:, start : start + n_bins] = hist / np.maximum(count, 1)[:, None]
            col = start + n_bins
        return out


def resolve_device(device: str = "auto") -> Any:
    """``auto``: CUDA when available, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TimmEncoder:
    """Pooled features of a timm network (``num_classes=0``), inputs normalised as ImageNet's.

    ``weights``: a local file (safetensors, or a PyTorch checkpoint read with ``weights_only=True``);
    without it the network is randomly initialised from ``seed`` (the same seed, the same features).
    """

    def __init__(
        self, arch: str, weights: str | Path | None = None, device: str = "auto", seed: int = 0
    ) -> None:
        import timm
        import torch

        from her2score.data.lowres import content_hash
        from her2score.models.nets.lowres import load_backbone_weights

        if Path(arch).suffix or "/" in arch:
            raise ConfigError(f"timm:NAME takes an architecture name, not a file ({arch}); pass weights=")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                net = timm.create_model(arch, pretrained=False, num_classes=0)
            except RuntimeError as exc:
                raise ConfigError(f"timm has no architecture {arch!r} ({exc})") from None
        self.note = load_backbone_weights(net, weights) if weights else f"random initialisation (seed {seed})"
        self.device = resolve_device(device)
        self.net = net.eval().to(self.device)
        self.name = f"timm:{arch}"
        self.dim = int(net.num_features)
        origin = f"weights-{content_hash(weights)}" if weights else f"random-{seed}"
        self.key = f"{self.name}-{origin}-imagenet-norm"
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(shape) * 255

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(tiles[..., :3])).to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        with torch.inference_mode():
            return self.net(x).float().cpu().numpy()


def make_encoder(spec: str, weights: str | Path | None = None, device: str = "auto", seed: int = 0) -> Any:
    """An encoder from its name: ``stain`` or ``timm:ARCH`` (e.g. ``timm:resnet18``)."""
    if spec == "stain":
        if weights is not None:
            raise ConfigError("the stain encoder takes no weights")
        return StainEncoder()
    if spec.startswith("timm:") and len(spec) > 5:
        return TimmEncoder(spec[5:], weights=weights, device=device, seed=seed)
    raise ConfigError(f"unknown encoder {spec!r}; use stain or timm:ARCH (e.g. timm:resnet18)")
