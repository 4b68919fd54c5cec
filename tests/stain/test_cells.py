"""Nuclei and membrane rings on tiny drawn scenes with known cells (positions and sizes in µm)."""

from __future__ import annotations

import numpy as np
import pytest

from her2score.stain.cells import CellParams, segment_cells


def draw_scene(
    mpp: float = 0.5,
    size_um: float = 128.0,
    spacing_um: float = 18.0,
    nucleus_um: float = 4.0,
    membrane_um: float = 7.5,
    membrane_od: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin and DAB OD maps with a grid of round cells; returns (hema, dab, centres in µm)."""
    rng = np.random.default_rng(seed)
    n = round(size_um / mpp)
    yy, xx = (np.mgrid[:n, :n] + 0.5) * mpp
    hema = np.full((n, n), 0.03, np.float32)
    dab = np.zeros((n, n), np.float32)
    centres = []
    for cy in np.arange(spacing_um / 2 + 4, size_um - spacing_um / 2, spacing_um):
        for cx in np.arange(spacing_um / 2 + 4, size_um - spacing_um / 2, spacing_um):
            r = np.hypot(yy - cy, xx - cx)
            hema[r <= nucleus_um] = 0.45
            dab[np.abs(r - membrane_um) <= 0.6] = membrane_od
            centres.append((cx, cy))
    hema += rng.normal(0, 0.01, hema.shape).astype(np.float32)
    return np.clip(hema, 0, None), dab, np.array(centres)


def _centres_um(labels: np.ndarray, mpp: float) -> np.ndarray:
    from scipy import ndimage as ndi

    com = ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1))
    return np.array([(x * mpp, y * mpp) for y, x in com])


def test_nuclei_found_where_drawn() -> None:
    hema, dab, centres = draw_scene()
    seg = segment_cells(hema, 0.5, dab=dab)
    assert seg.n_cells == len(centres)
    found = _centres_um(seg.nuclei, 0.5)
    dist = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(axis=1)
    assert dist.max() < 1.0  # µm


def test_same_cells_at_another_resolution() -> None:
    """Sizes are in µm: the same tissue scanned at 0.25 µm/px gives the same cells."""
    coarse = segment_cells(*draw_scene(mpp=0.5)[:1], 0.5)
    fine = segment_cells(*draw_scene(mpp=0.25)[:1], 0.25)
    assert coarse.n_cells == fine.n_cells
    area_coarse = np.bincount(coarse.nuclei.ravel())[1:].mean() * 0.25
    area_fine = np.bincount(fine.nuclei.ravel())[1:].mean() * 0.0625
    assert area_fine == pytest.approx(area_coarse, rel=0.15)
    assert area_fine == pytest.approx(np.pi * 4.0**2, rel=0.25)


def test_rings_sit_outside_the_nucleus_and_within_the_expansion() -> None:
    from scipy import ndimage as ndi

    params = CellParams()
    hema, dab, _ = draw_scene(membrane_od=0.5)
    seg = segment_cells(hema, 0.5, params=params, dab=dab)
    dist_um = ndi.distance_transform_edt(seg.nuclei == 0) * 0.5
    ring = seg.rings > 0
    assert dist_um[ring].min() >= params.perinuclear_um - 1e-6
    assert dist_um[ring].max() <= params.cell_expansion_um + 1e-6
    # every cell has a ring, and the drawn membrane (3.5 µm out) falls inside it
    assert set(np.unique(seg.rings[ring])) == set(range(1, seg.n_cells + 1))
    assert (seg.rings[dab > 0.4] > 0).mean() > 0.95


def test_touching_nuclei_are_split() -> None:
    n = 80
    yy, xx = np.mgrid[:n, :n] * 0.5
    hema = np.full((n, n), 0.03, np.float32)
    for cx in (15.0, 22.5):  # two 4 µm-radius nuclei overlapping by 0.5 µm
        hema[np.hypot(yy - 20, xx - cx) <= 4.0] = 0.45
    seg = segment_cells(hema, 0.5)
    assert seg.n_cells == 2


def test_blank_image_has_no_cells() -> None:
    seg = segment_cells(np.zeros((64, 64), np.float32), 0.5)
    assert seg.n_cells == 0
    assert seg.rings.max() == 0
