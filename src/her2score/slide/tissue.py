"""Tissue detection for IHC and H&E, and a tile grid over the tissue.

Tissue is told from glass by optical density, colour and texture, measured against the image's own white
point (so a scanner's grey or yellowish background reads as zero). Pale tissue, such as HER2-0
breast carrying little more than hematoxylin, is kept by a low density floor together with a
colour (chroma) test and a texture test (glass is smooth, tissue is not). What is not tissue is
removed explicitly:

* pen ink: saturated green/cyan/blue or pure red hues that no stain produces, grown by a margin;
* dark debris and black ink: near-black, unsaturated pixels;
* slide-edge shadows: dark, unsaturated regions connected to the image border.

Small specks are dropped and holes (lumens, fat) filled, with sizes in µm² when the resolution is
known. Everything is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from her2score.errors import NoTissueError
from her2score.optics import BACKGROUND, GLASS_MIN, rgb_to_od

if TYPE_CHECKING:
    from her2score.slide.reader import Slide

#: Optical density (sum over R, G, B, against the white point) always counted as tissue.
OD_CEILING = 0.25
#: Below this density nothing is tissue, whatever Otsu says (glass noise, JPEG ringing).
OD_FLOOR = 0.04
#: Chroma (max-min channel, 0-1, after white balancing) that marks faintly stained tissue.
CHROMA_TISSUE = 0.05
#: Local standard deviation of brightness (0-1, 5x5 px) above which a faint region is textured
#: tissue rather than glass: glass scans at about 0.002-0.004, pale tissue at 0.01-0.03.
TEXTURE_STD = 0.008
#: Smallest tissue piece kept, in µm² (a 100 µm x 100 µm core fragment).
MIN_TISSUE_UM2 = 10_000.0
#: Largest hole filled inside tissue, in µm² (lumens, fat lobules, tears).
MAX_HOLE_UM2 = 250_000.0
#: Margin grown around pen ink before it is removed, in µm.
PEN_MARGIN_UM = 16.0


def tissue_mask(
    rgb: np.ndarray,
    mpp: float | None = None,
    min_tissue_um2: float = MIN_TISSUE_UM2,
    max_hole_um2: float = MAX_HOLE_UM2,
) -> np.ndarray:
    """Boolean mask of tissue in an RGB uint8 image (IHC or H&E), same height and width.

    ``mpp`` (µm/px of ``rgb``) scales the clean-up; without it sizes are taken relative to the image
    (specks under 0.1% of its area dropped, holes under 2% filled).
    """
    from scipy import ndimage as ndi

    rgb = _as_rgb(rgb)
    h, w = rgb.shape[:2]
    if mpp is not None:
        px_area = float(mpp) ** 2
        min_px = max(1, round(min_tissue_um2 / px_area))
        hole_px = max(1, round(max_hole_um2 / px_area))
        margin_px = max(1, round(PEN_MARGIN_UM / float(mpp)))
    else:
        min_px = max(1, round(0.001 * h * w))
        hole_px = max(1, round(0.02 * h * w))
        margin_px = max(1, round(0.004 * min(h, w)))

    white = _white_point(rgb)
    # Density against the image's own glass, so that glass reads as 0; summed per channel plane
    # (reductions over a length-3 last axis are slow in numpy, and no (H, W, 3) float array is held).
    od_sum = rgb_to_od(rgb[..., 0], white[0])
    od_sum += rgb_to_od(rgb[..., 1], white[1])
    od_sum += rgb_to_od(rgb[..., 2], white[2])
    norm = np.minimum(rgb.astype(np.float32) / white, 1.0)
    r, g, b = norm[..., 0], norm[..., 1], norm[..., 2]
    vmax = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    chroma = vmax - vmin
    saturation = chroma / np.maximum(vmax, 1e-3)

    threshold = _density_threshold(od_sum)
    faint = od_sum > OD_FLOOR / 2
    textured = _local_std((r + g + b) / 3.0, 5) > TEXTURE_STD
    stained = (od_sum > threshold) | ((chroma > CHROMA_TISSUE) & (od_sum > OD_FLOOR)) | (textured & faint)

    near_black = _near_black(vmax, saturation)
    pen = _pen_ink(norm, vmax, vmin, saturation)
    if pen.any():
        pen = ndi.maximum_filter(pen, size=2 * margin_px + 1)  # separable: fast for wide margins
    shadow = _edge_shadow(vmax, saturation)

    mask = stained & ~near_black & ~pen & ~shadow
    mask = _clean(mask, min_px=min_px, hole_px=hole_px)
    # Hole filling must not bring ink, debris or shadow back.
    mask &= ~pen & ~near_black & ~shadow
    return _remove_small(mask, min_px)


def near_black(rgb: np.ndarray) -> np.ndarray:
    """Near-black, unsaturated pixels of an RGB uint8 image against its own white point: dark debris,
    black ink, a scanner's black padding. :func:`tissue_mask` never counts them as tissue; a fallback
    tissue mask must not either."""
    rgb = _as_rgb(rgb)
    norm = np.minimum(rgb.astype(np.float32) / _white_point(rgb), 1.0)
    vmax, vmin = norm.max(axis=-1), norm.min(axis=-1)
    return _near_black(vmax, (vmax - vmin) / np.maximum(vmax, 1e-3))


def _near_black(vmax: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    return (vmax < 0.25) | ((vmax < 0.35) & (saturation < 0.25))


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"tissue_mask needs an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"tissue_mask needs uint8 RGB, got {arr.dtype}")
    return arr[..., :3]


def _white_point(rgb: np.ndarray) -> np.ndarray:
    """The image's white (background glass), per channel (R, G, B).

    A high percentile of the bright pixels (every channel at least :data:`GLASS_MIN`), never darker
    than that, so that an image filled with tissue is not mistaken for background.
    """
    flat = rgb.reshape(-1, 3)
    step = max(1, flat.shape[0] // 200_000)
    sample = flat[::step].astype(np.float32)
    bright = sample[sample.min(axis=1) >= GLASS_MIN]
    if len(bright) >= 50:
        white = np.percentile(bright, 99, axis=0)
    else:
        white = np.full(3, BACKGROUND, np.float32)
    return np.clip(white, GLASS_MIN, BACKGROUND).astype(np.float32)


def _local_std(gray: np.ndarray, size: int) -> np.ndarray:
    from scipy import ndimage as ndi

    mean = ndi.uniform_filter(gray, size, mode="reflect")
    mean_sq = ndi.uniform_filter(gray * gray, size, mode="reflect")
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def _density_threshold(od_sum: np.ndarray) -> float:
    """Otsu between glass and tissue, held between the floor and the ceiling."""
    from skimage.filters import threshold_otsu

    values = od_sum[od_sum < 2.0].ravel()
    step = max(1, values.size // 200_000)
    values = values[::step]
    if values.size < 2 or float(values.max() - values.min()) < 1e-6:
        return OD_FLOOR * 2
    otsu = float(threshold_otsu(values))
    return float(np.clip(otsu, OD_FLOOR, OD_CEILING))


def _hue_degrees(norm: np.ndarray, vmax: np.ndarray, vmin: np.ndarray) -> np.ndarray:
    r, g, b = norm[..., 0], norm[..., 1], norm[..., 2]
    delta = np.maximum(vmax - vmin, 1e-6)
    hue = np.where(
        vmax == r,
        ((g - b) / delta) % 6.0,
        np.where(vmax == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0),
    )
    return hue * 60.0


def _pen_ink(norm: np.ndarray, vmax: np.ndarray, vmin: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """Pixels in colours of marker pens that neither hematoxylin, eosin nor DAB produce.

    Hematoxylin is violet-blue (hue about 230-290°) and never very saturated; eosin pink (300-360°);
    DAB brown (10-50°). Green and cyan ink (70-200°), vivid pure blue (200-235°, saturation > 0.6)
    and vivid red (saturation > 0.85) are ink.
    """
    hue = _hue_degrees(norm, vmax, vmin)
    green_cyan = (hue >= 70) & (hue < 200) & (saturation > 0.25)
    blue = (hue >= 200) & (hue < 235) & (saturation > 0.6)
    red = ((hue >= 350) | (hue < 8)) & (saturation > 0.85) & (vmax > 0.35)
    return green_cyan | blue | red


def _edge_shadow(vmax: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """Dark, colourless regions connected to the image border (coverslip and slide edges)."""
    from scipy import ndimage as ndi

    candidate = (vmax < 0.6) & (saturation < 0.12)
    if not candidate.any():
        return candidate
    labels, n = ndi.label(candidate)
    if n == 0:
        return candidate
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    if border.size == 0:
        return np.zeros_like(candidate)
    # Only sizeable strips count: a few dark pixels touching the edge are tissue, not a shadow.
    sizes = np.bincount(labels.ravel())
    min_size = max(4, int(0.002 * candidate.size))
    border = border[sizes[border] >= min_size]
    return np.isin(labels, border)


def _clean(mask: np.ndarray, min_px: int, hole_px: int) -> np.ndarray:
    from scipy import ndimage as ndi

    # A small closing joins the nuclei and fibres of pale tissue into one piece.
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=1, border_value=0) | mask
    mask = ndi.binary_opening(mask, structure=np.ones((2, 2), bool))
    mask = _remove_small(mask, min_px)
    return _fill_holes(mask, hole_px)


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop pieces under ``min_px`` pixels (4-connected)."""
    from skimage.morphology import remove_small_objects

    if min_px <= 1 or not mask.any():
        return mask
    return remove_small_objects(mask, max_size=min_px - 1, connectivity=1)


def _fill_holes(mask: np.ndarray, hole_px: int) -> np.ndarray:
    """Fill holes of at most ``hole_px`` pixels enclosed by tissue.

    Not ``skimage.morphology.remove_small_holes``: it also fills small stretches of glass that touch
    the image's edge (they are not holes), and flips the process-wide warnings filters on each call,
    which is not thread-safe (slides are prepared in threads).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    large = remove_small_objects(holes, max_size=hole_px, connectivity=1)
    return mask | (holes & ~large)


def slide_tissue_mask(slide: Slide, mpp: float = 8.0, require: bool = False) -> tuple[np.ndarray, float]:
    """Tissue mask of a whole slide read at ``mpp`` µm/px (never finer than level 0).

    Returns the mask and the µm/px it is at. With ``require=True`` an empty mask raises
    :class:`NoTissueError` naming the slide.
    """
    overview, used = slide.read_overview(mpp=mpp)
    mask = tissue_mask(overview, mpp=used)
    if require and not mask.any():
        raise NoTissueError(f"no tissue found (mask at {used:g} µm/px is empty)", slide.path)
    return mask, used


def tissue_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` bounding the tissue, in mask pixels (x1, y1 exclusive); None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class Tile:
    """A tile of the slide: level-0 rectangle ``(x, y, w, h)``, read as ``size`` px at ``mpp`` µm/px."""

    x: int
    y: int
    w: int
    h: int
    size: int
    mpp: float
    tissue_fraction: float

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Level-0 ``(x0, y0, x1, y1)``, as :meth:`Slide.read_bounds` takes it."""
        return self.x, self.y, self.x + self.w, self.y + self.h


def tile_grid(
    slide: Slide,
    tile_size: int,
    mpp: float,
    overlap: int = 0,
    min_tissue: float = 0.25,
    mask_mpp: float = 8.0,
) -> list[Tile]:
    """Tiles of ``tile_size`` px at ``mpp`` µm/px covering the tissue, row by row.

    ``overlap`` is in output pixels; a tile is kept when at least ``min_tissue`` of its area is tissue
    in a coarse mask computed at ``mask_mpp`` µm/px (never finer than level 0); ``min_tissue=0``
    keeps every tile that touches tissue. Tiles at the right and bottom edges may reach past the
    slide (read as white).
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap}")
    level0 = slide.require_mpp()
    mask, used = slide_tissue_mask(slide, mpp=max(mask_mpp, level0))
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    scale = mpp / level0  # level-0 px per output px
    side = tile_size * scale
    stride = (tile_size - overlap) * scale
    to_mask = level0 / used  # mask px per level-0 px
    n_cols = max(1, math.ceil((slide.width - side) / stride) + 1) if slide.width > side else 1
    n_rows = max(1, math.ceil((slide.height - side) / stride) + 1) if slide.height > side else 1
    w0 = round(side)
    # All tiles at once: level-0 origins, their windows in the mask, tissue area from the integral image.
    xs = np.round(np.arange(n_cols) * stride).astype(np.int64)
    ys = np.round(np.arange(n_rows) * stride).astype(np.int64)
    mh, mw = mask.shape

    def window(starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = np.floor(starts * to_mask).astype(np.int64)
        hi = np.maximum(lo + 1, np.ceil((starts + w0) * to_mask).astype(np.int64))
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit), hi - lo  # clipped bounds, unclipped size

    cx0, cx1, cw = window(xs, mw)
    ry0, ry1, rh = window(ys, mh)
    area = (
        integral[np.ix_(ry1, cx1)]
        - integral[np.ix_(ry0, cx1)]
        - integral[np.ix_(ry1, cx0)]
        + integral[np.ix_(ry0, cx0)]
    )
    fraction = area / (rh[:, None] * cw[None, :])  # parts past the slide's edge count as background
    keep = (fraction >= min_tissue) & (fraction > 0)
    return [
        Tile(int(xs[c]), int(ys[r]), w0, w0, tile_size, float(mpp), round(float(fraction[r, c]), 4))
        for r, c in zip(*np.nonzero(keep), strict=True)
    ]
