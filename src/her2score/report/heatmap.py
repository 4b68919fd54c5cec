"""Heatmaps (Grad-CAM, attention, DAB scores) blended over a slide image for a pathologist to inspect."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2score.io import save_figure


def overlay_heatmap(
    rgb: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.45,
    mask: np.ndarray | None = None,
    cmap: str = "jet",
    normalize: bool = True,
) -> np.ndarray:
    """Blend a colour-mapped heatmap over an RGB image; returns RGB uint8 of the image's size.

    ``heat`` may have any size (a 7x7 Grad-CAM grid, a tile-level map): it is resized smoothly to the
    image. With ``normalize`` it is stretched to 0..1 over its finite values (inside ``mask`` when
    given); otherwise it is clipped to 0..1. Only pixels inside ``mask`` (any size, resized nearest)
    and with a finite heat value are coloured, so background stays as it is.
    """
    image = _as_rgb(rgb)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    scaled, inside, _ = _prepare(heat, image.shape[:2], mask, normalize)
    import matplotlib

    colours = matplotlib.colormaps[cmap](np.nan_to_num(scaled, nan=0.0))[..., :3] * 255.0
    out = image.astype(np.float32)
    blend = alpha * inside[..., None]
    out = (1.0 - blend) * out + blend * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap_figure(
    rgb: np.ndarray,
    heat: np.ndarray,
    path: str | Path,
    title: str | None = None,
    alpha: float = 0.45,
    mask: np.ndarray | None = None,
    cmap: str = "jet",
    heat_label: str = "relative importance",
) -> Path:
    """Save the image beside its heatmap overlay, with a colour bar; returns ``path``.

    The colour bar is labelled in the heatmap's own units (its min and max over the coloured area).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = _as_rgb(rgb)
    overlay = overlay_heatmap(image, heat, alpha=alpha, mask=mask, cmap=cmap)
    _, _, (low, high) = _prepare(heat, image.shape[:2], mask, normalize=True)
    if high <= low:
        high = low + 1.0
    aspect = image.shape[1] / max(image.shape[0], 1)
    panel_height = 4.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_height * aspect + 1.2, panel_height + 0.6))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(overlay)
    axes[1].set_title("overlay", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    mappable = ScalarMappable(norm=Normalize(low, high), cmap=cmap)
    cbar = fig.colorbar(mappable, ax=axes, fraction=0.035, pad=0.02)
    cbar.set_label(heat_label)
    if title:
        fig.suptitle(title)
    return save_figure(path, fig)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    return image


def _resize_heat(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``(height, width)``; NaN regions stay NaN (nearest) so they are not coloured."""
    from PIL import Image

    values = np.asarray(heat, dtype=np.float32)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"heat must be a non-empty 2-D map, got shape {values.shape}")
    height, width = size
    if values.shape == (height, width):
        return values.astype(float)
    finite = np.isfinite(values)
    filled = np.where(finite, values, np.nanmean(values) if finite.any() else 0.0).astype(np.float32)
    resized = np.asarray(Image.fromarray(filled).resize((width, height), Image.Resampling.BILINEAR))
    if not finite.all():
        valid = _resize_mask(finite, (height, width))
        resized = np.where(valid, resized, np.nan)
    return resized.astype(float)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    values = np.asarray(mask).astype(bool)
    if values.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {values.shape}")
    height, width = size
    if values.shape == (height, width):
        return values
    small = Image.fromarray(values.astype(np.uint8) * 255)
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST)) > 127


def _prepare(
    heat: np.ndarray, size: tuple[int, int], mask: np.ndarray | None, normalize: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Heat resized to ``size`` and scaled to 0..1, the pixels to colour, and the range mapped to 0..1."""
    values = _resize_heat(heat, size)
    inside = np.isfinite(values)
    if mask is not None:
        inside &= _resize_mask(mask, size)
    if not normalize:
        return np.clip(values, 0.0, 1.0), inside, (0.0, 1.0)
    region = values[inside]
    if region.size == 0:
        return np.zeros_like(values), inside, (0.0, 1.0)
    low, high = float(region.min()), float(region.max())
    if high <= low:
        return np.zeros_like(values), inside, (low, high)
    return np.clip((values - low) / (high - low), 0.0, 1.0), inside, (low, high)


def save_map_overlay(rgb: np.ndarray, heat: np.ndarray, path: str | Path) -> Path:
    """Save ``rgb`` (a slide's low-resolution picture) beside ``heat`` (a 0..1 map of any size: Grad-CAM,
    attention, tile probabilities) drawn over its tissue, as one PNG."""
    from her2score.io import write_png

    tissue = rgb.astype(np.int16).min(axis=-1) < 235  # colour only over tissue, not glass/padding
    overlay = overlay_heatmap(rgb, heat, alpha=0.45, mask=tissue if tissue.any() else None)
    return write_png(path, np.concatenate([rgb, overlay], axis=1))


def tile_map(
    coords: np.ndarray,
    weights: np.ndarray,
    tile_px: float,
    overview_shape: tuple[int, int],
    scale: float,
) -> np.ndarray:
    """Per-tile values (attention, tile probabilities) painted into an overview-sized map.

    ``coords`` (N, 2) are the tiles' top-left corners in level-0 px (as feature files hold them),
    ``tile_px`` a tile's side in level-0 px, ``scale`` overview px per level-0 px. Returns a float map
    of ``overview_shape`` (height, width), NaN where no tile lies (left uncoloured by
    :func:`overlay_heatmap`); where tiles overlap the larger value wins.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(coords) != len(weights):
        raise ValueError(f"{len(coords)} tile positions but {len(weights)} values")
    if tile_px <= 0 or scale <= 0:
        raise ValueError(f"tile_px and scale must be positive, got {tile_px} and {scale}")
    height, width = int(overview_shape[0]), int(overview_shape[1])
    out = np.full((height, width), np.nan)
    side = max(1, round(tile_px * scale))
    for (x, y), value in zip(coords, weights, strict=True):
        if not np.isfinite(value):
            continue
        x0, y0 = max(0, round(x * scale)), max(0, round(y * scale))
        x1, y1 = min(width, x0 + side), min(height, y0 + side)
        if x1 <= x0 or y1 <= y0:
            continue
        region = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = np.where(np.isnan(region), value, np.fmax(region, value))
    return out
