"""Tissue detection and the tile grid, on generated images and on the real ones when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from slide_fixtures import LEVEL0_MPP, REAL, SIZE, write_pyramid

from her2score.errors import NoTissueError
from her2score.slide import open_slide, slide_tissue_mask, tile_grid, tissue_bbox, tissue_mask

MASK_MPP = 8.0


def glass_with_artefacts(seed: int = 0, height: int = 300, width: int = 400) -> np.ndarray:
    """Slightly off-white glass with pen strokes (blue, green, red, black), dark debris and edge shadows."""
    rng = np.random.default_rng(seed)
    glass = np.array([238, 236, 241], np.float32) + rng.normal(0, 1.5, (height, width, 3))
    img = Image.fromarray(np.clip(glass, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.line([(30, 60), (360, 80)], fill=(30, 70, 190), width=7)  # blue marker
    draw.line([(30, 140), (360, 120)], fill=(40, 140, 60), width=7)  # green marker
    draw.line([(50, 200), (320, 180)], fill=(200, 20, 30), width=6)  # red marker
    draw.line([(50, 250), (320, 255)], fill=(25, 25, 30), width=6)  # black marker
    draw.rectangle([0, 0, width, 12], fill=(90, 90, 92))  # shadow along the top edge
    draw.rectangle([width - 15, 0, width, height], fill=(70, 70, 72))  # and the right edge
    for _ in range(15):
        x, y = int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20))
        draw.ellipse([x, y, x + 3, y + 3], fill=(15, 15, 15))  # dust and debris
    return np.asarray(img)


def add_pale_tissue(rgb: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paint a pale, hematoxylin-only (light blue-grey) textured piece; returns the image and its truth."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    truth = ((yy - 0.6 * h) / (0.2 * h)) ** 2 + ((xx - 0.45 * w) / (0.25 * w)) ** 2 < 1
    out = rgb.astype(np.float32).copy()
    nuclei = rng.random((h, w)) < 0.04
    colour = np.array([216, 216, 229], np.float32) + rng.normal(0, 3, (h, w, 1))
    colour[nuclei] -= np.array([40, 35, 15], np.float32)
    out[truth] = colour[truth]
    return np.clip(out, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("mpp", [MASK_MPP, None])
def test_glass_pen_debris_and_shadows_are_not_tissue(mpp: float | None) -> None:
    mask = tissue_mask(glass_with_artefacts(), mpp=mpp)
    assert mask.dtype == bool
    assert mask.mean() < 0.005


def test_blank_glass_is_not_tissue() -> None:
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(245, 2, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(glass, mpp=MASK_MPP).sum() == 0


def test_pale_hematoxylin_only_tissue_is_found_among_artefacts() -> None:
    rgb, truth = add_pale_tissue(glass_with_artefacts(seed=2), seed=3)
    mask = tissue_mask(rgb, mpp=MASK_MPP)
    assert (mask & truth).sum() / truth.sum() > 0.9
    assert (mask & ~truth).sum() / (~truth).sum() < 0.02


def test_tissue_bbox() -> None:
    mask = np.zeros((50, 80), bool)
    assert tissue_bbox(mask) is None
    mask[10:20, 30:45] = True
    assert tissue_bbox(mask) == (30, 10, 45, 20)


def test_slide_mask_and_no_tissue_error(pyramid_tiff: Path, tmp_path: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        mask, used = slide_tissue_mask(slide, mpp=MASK_MPP)
        assert used == MASK_MPP
        assert mask.shape == (round(SIZE[1] * LEVEL0_MPP / MASK_MPP), round(SIZE[0] * LEVEL0_MPP / MASK_MPP))
        # The fixture's two tissue pieces cover about a quarter of the slide.
        assert 0.2 < mask.mean() < 0.45
    blank = np.full((1024, 1024, 3), 243, np.uint8)
    path = write_pyramid(tmp_path / "blank.tif", blank, mpp=0.5, levels=2)
    with open_slide(path) as slide:
        assert not slide_tissue_mask(slide)[0].any()
        with pytest.raises(NoTissueError, match=r"blank\.tif"):
            slide_tissue_mask(slide, require=True)


def test_tile_grid_covers_tissue(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        tiles = tile_grid(slide, tile_size=256, mpp=1.0, overlap=0, min_tissue=0.5)
        mask, _ = slide_tissue_mask(slide, mpp=MASK_MPP)
        assert tiles, "no tiles over the tissue"
        side0 = round(256 * 1.0 / LEVEL0_MPP)
        for t in tiles:
            assert (t.w, t.h, t.size, t.mpp) == (side0, side0, 256, 1.0)
            assert t.x % side0 == 0
            assert t.y % side0 == 0
            assert 0.5 <= t.tissue_fraction <= 1.0
            # The fraction is the tile's share of the coarse mask (1024 level-0 px = 32 mask px).
            mx, my = t.x * LEVEL0_MPP // MASK_MPP, t.y * LEVEL0_MPP // MASK_MPP
            window = mask[int(my) : int(my) + 32, int(mx) : int(mx) + 32]
            assert t.tissue_fraction == pytest.approx(window.sum() / 32**2, abs=1e-3)
        region = slide.read_bounds(tiles[0].bounds, mpp=tiles[0].mpp)
        assert region.shape == (256, 256, 3)
        # Overlap gives more tiles; no tissue requirement gives the whole grid.
        overlapping = tile_grid(slide, tile_size=256, mpp=1.0, overlap=128, min_tissue=0.5)
        assert len(overlapping) > 2 * len(tiles)
        every = tile_grid(slide, tile_size=256, mpp=1.0, min_tissue=0.0)
        assert len(every) >= len(tiles)
        assert tile_grid(slide, tile_size=256, mpp=1.0, min_tissue=0.5) == tiles  # deterministic


def test_tile_grid_rejects_bad_arguments(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        with pytest.raises(ValueError):
            tile_grid(slide, tile_size=0, mpp=1.0)
        with pytest.raises(ValueError):
            tile_grid(slide, tile_size=256, mpp=1.0, overlap=256)


# ---------------------------------------------------------------------------- real images
def _real_images(folder: str, pattern: str) -> list[Path]:
    root = REAL / folder
    if not root.is_dir():
        pytest.skip(f"real data not present: {root}")
    return sorted(root.glob(pattern))


@pytest.mark.realdata
@pytest.mark.parametrize("stain", ["HE", "IHC"])
def test_tissue_covers_bci_patches(stain: str) -> None:
    """BCI patches are filled with tissue (fat included), many of the IHC ones very pale."""
    fractions = []
    for path in _real_images("bci-her2-pairs", f"{stain}/*.png"):
        with open_slide(path, mpp=0.5) as slide:
            rgb, used = slide.read_overview(mpp=2.0)
        fractions.append(tissue_mask(rgb, mpp=used).mean())
    assert len(fractions) == 13
    assert np.median(fractions) > 0.95
    assert min(fractions) > 0.5  # the emptiest is mostly fat


@pytest.mark.realdata
def test_tissue_covers_real_he_tiles_and_mist() -> None:
    paths = _real_images("he-tiles", "*") + _real_images("mist-her2-pairs", "*/*.jpg")
    fractions = []
    for path in paths:
        with open_slide(path, mpp=0.5) as slide:
            rgb, used = slide.read_overview(mpp=2.0)
        fractions.append(tissue_mask(rgb, mpp=used).mean())
    assert np.median(fractions) > 0.9
    assert min(fractions) > 0.5


@pytest.mark.realdata
def test_tissue_on_real_svs_leaves_background_out() -> None:
    path = REAL / "slides" / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    with open_slide(path) as slide:
        mask, used = slide_tissue_mask(slide, mpp=4.0)
        rgb, _ = slide.read_overview(mpp=used)
    # A strip of tissue on a wide white background: a third to a half of the image is tissue.
    assert 0.25 < mask.mean() < 0.55
    grey = rgb.mean(axis=-1)
    assert grey[mask].mean() < grey[~mask].mean() - 40  # what is called tissue is darker than the rest
    assert (grey[~mask] > 200).mean() > 0.9
