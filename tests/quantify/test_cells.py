"""Nuclei and membrane rings on tiny drawn scenes with known cells (positions and sizes in µm)."""

from __future__ import annotations

import numpy as np
import pytest

from her2score.quantify.cells import CellParams, segment_cells


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

    params = CellParams(cell_model="ring")
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


def test_membrane_ridges_find_lines_not_a_blush() -> None:
    from her2score.quantify.cells import membrane_ridges

    n = 120
    dab = np.full((n, n), 0.3, np.float32)  # a uniform cytoplasmic blush ...
    assert not membrane_ridges(dab, 0.5).any()
    dab[:, 60:62] = 0.6  # ... with one 1 µm membrane line on top
    ridges = membrane_ridges(dab, 0.5)
    assert ridges[:, 60:62].all()
    assert ridges.sum() == 2 * n


def test_stained_membranes_keep_packed_nuclei_apart() -> None:
    """Two nuclei joined by hematoxylin leaking from the stained membrane between them."""
    n = 80
    yy, xx = np.mgrid[:n, :n] * 0.5
    hema = np.full((n, n), 0.03, np.float32)
    dab = np.zeros((n, n), np.float32)
    for cx in (14.0, 26.0):
        hema[np.hypot(yy - 20, xx - cx) <= 5.0] = 0.45
    line = np.abs(xx - 20.0) <= 1.0
    hema[line & (np.abs(yy - 20) <= 5)] = 0.45  # dark membrane seen in the hematoxylin channel
    dab[line] = 0.6
    without = segment_cells(hema, 0.5, params=CellParams(membrane_cut_od=0.0, line_removal_um=0.0))
    assert without.n_cells != 2  # the leak makes a third "nucleus" on the membrane (or merges)
    seg = segment_cells(hema, 0.5, dab=dab)
    assert seg.n_cells == 2
    found = sorted(x * 0.5 for x in _centres_um(seg.nuclei, 1.0)[:, 0])
    assert found == pytest.approx([14.0, 26.0], abs=1.0)


def test_membrane_cells_reach_a_membrane_beyond_the_fixed_ring() -> None:
    """Large (columnar-like) cells whose membrane lies 6.5 µm beyond the nucleus edge: the fixed ring
    (5 µm) misses it, the membrane model grows each cell to it and measures it on its border band."""
    hema, dab, _ = draw_scene(spacing_um=26.0, nucleus_um=4.0, membrane_um=10.5, membrane_od=0.5)
    from scipy import ndimage as ndi

    on_membrane = dab > 0.4
    ring = segment_cells(hema, 0.5, params=CellParams(cell_model="ring"), dab=dab)
    cells = segment_cells(hema, 0.5, params=CellParams(cell_model="membrane"), dab=dab)
    assert cells.n_cells == ring.n_cells >= 9
    ids = np.arange(1, cells.n_cells + 1)
    assert np.max(ndi.maximum(dab, ring.rings, ids)) < 0.1  # the fixed ring stops short of it
    assert np.min(ndi.maximum(dab, cells.rings, ids)) > 0.45  # every cell's border band reaches it
    # ... its own: the membrane pixels in a border band belong to the cell of the nearest nucleus
    _, (iy, ix) = ndi.distance_transform_edt(cells.nuclei == 0, return_indices=True)
    own = cells.nuclei[iy, ix]
    hit = on_membrane & (cells.rings > 0)
    assert hit.sum() > 0.4 * on_membrane.sum()
    assert (cells.rings[hit] == own[hit]).mean() > 0.95


def test_unknown_cell_model_is_refused() -> None:
    hema, dab, _ = draw_scene()
    with pytest.raises(ValueError, match="cell_model"):
        segment_cells(hema, 0.5, params=CellParams(cell_model="voronoi"), dab=dab)


def test_packed_cells_have_a_ring_on_every_side() -> None:
    """Cells 10 µm apart with 4 µm nuclei meet inside the perinuclear band: the ring follows the
    border, so every side of an inner cell is measured."""
    hema, dab, _ = draw_scene(spacing_um=10.0, nucleus_um=3.5, membrane_um=5.0, membrane_od=0.5)
    seg = segment_cells(hema, 0.5, dab=dab)
    from scipy import ndimage as ndi

    centres = ndi.center_of_mass(seg.nuclei > 0, seg.nuclei, range(1, seg.n_cells + 1))
    yy, xx = np.nonzero(seg.rings)
    ids = seg.rings[yy, xx] - 1
    cy = np.array([c[0] for c in centres])
    cx = np.array([c[1] for c in centres])
    sector = ((np.arctan2(yy - cy[ids], xx - cx[ids]) + np.pi) / (2 * np.pi) * 8).astype(int) % 8
    covered = np.zeros((seg.n_cells, 8), bool)
    covered[ids, sector] = True
    inner = (cy > 20) & (cy < seg.nuclei.shape[0] - 20) & (cx > 20) & (cx < seg.nuclei.shape[1] - 20)
    assert inner.sum() >= 9
    assert covered[inner].all()


def test_cells_grown_on_a_coarser_grid_still_reach_their_own_membrane() -> None:
    """``growth_mpp``: the watershed on a 1 µm/px grid (a faster option) keeps every nucleus in its own
    cell and still brings each border band onto that cell's membrane."""
    from scipy import ndimage as ndi

    hema, dab, _ = draw_scene(spacing_um=26.0, nucleus_um=4.0, membrane_um=10.5, membrane_od=0.5)
    full = segment_cells(hema, 0.5, dab=dab)
    coarse = segment_cells(hema, 0.5, params=CellParams(growth_mpp=1.0), dab=dab)
    assert np.array_equal(coarse.nuclei, full.nuclei)
    assert np.array_equal(coarse.cells[full.nuclei > 0], full.nuclei[full.nuclei > 0])
    ids = np.arange(1, coarse.n_cells + 1)
    assert np.min(ndi.maximum(dab, coarse.rings, ids)) > 0.45
    on_membrane = dab > 0.4
    agree = (coarse.cells == full.cells)[on_membrane | (full.cells > 0)].mean()
    assert agree > 0.9


def test_a_gland_lumen_ringed_by_touching_nuclei_is_not_one_nucleus() -> None:
    """Touching nuclei round a lumen (a real gland) make a closed ring in the nuclear mask: filling
    that hole made the whole gland one giant "nucleus" (real BCI 00249), so its cells were lost."""
    from her2score.quantify.morphology import fill_holes

    mpp = 0.5
    n = round(80 / mpp)
    yy, xx = (np.mgrid[:n, :n] + 0.5) * mpp
    hema = np.full((n, n), 0.03, np.float32)
    lumen_r, nucleus_r = 14.0, 4.0
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)  # 16 nuclei 5.5 µm apart: they touch
    for a in angles:
        cy, cx = 40 + lumen_r * np.sin(a), 40 + lumen_r * np.cos(a)
        hema[np.hypot(yy - cy, xx - cx) <= nucleus_r] = 0.45
    ring = hema > 0.2
    assert fill_holes(ring)[n // 2, n // 2]  # the ring does close round the lumen
    assert not fill_holes(ring, round(50 / mpp**2))[n // 2, n // 2]
    seg = segment_cells(hema, mpp, params=CellParams(cell_model="ring"))
    assert seg.nuclei[n // 2, n // 2] == 0  # the lumen is no nucleus
    areas = np.bincount(seg.nuclei.ravel())[1:] * mpp**2
    assert areas.max() < 250.0  # nothing of gland size (16 nuclei of 50 µm² and the lumen: ~1500)
    # a vesicular nucleus's pale centre is still filled
    pale = np.full((n, n), 0.03, np.float32)
    r = np.hypot(yy - 40, xx - 40)
    pale[(r <= 6.0) & (r >= 3.0)] = 0.45
    seg = segment_cells(pale, mpp, params=CellParams(cell_model="ring"))
    assert seg.nuclei[n // 2, n // 2] > 0


def test_cells_do_not_depend_on_the_tint_of_the_scan() -> None:
    """Unstained cells 24 µm apart in stroma: extracellular space is found relative to the image's
    unstained DAB floor, so a grey or tan scan (real BCI patches read 0.02-0.17 OD of DAB on bare stroma)
    gives the same cells as a clean one. With a fixed 0.06 OD cut, a 0.1 OD tint left no extracellular
    space and cells grew through the stroma until they met (638 instead of 279 µm²; on real BCI 00052
    the nest-edge cells reached into the stroma, and their measured ring with them)."""
    from scipy import ndimage as ndi

    from her2score.quantify.cells import MAX_UNSTAINED_FLOOR_OD, unstained_floor

    hema, dab, _ = draw_scene(spacing_um=24.0, nucleus_um=4.0, membrane_od=0.0)
    areas = []
    for tint in (0.0, 0.1):
        seg = segment_cells(hema, 0.5, dab=dab + np.float32(tint))
        areas.append(ndi.sum(np.ones_like(dab), seg.cells, np.arange(1, seg.n_cells + 1)) * 0.25)
    assert np.array_equal(areas[0], areas[1])
    assert areas[0].max() < np.pi * (4.0 + 6.0) ** 2  # about 5 µm beyond the nucleus, not 12
    far = np.ones(dab.shape, bool)
    assert unstained_floor(dab + np.float32(0.1), far, None) == pytest.approx(0.1, abs=1e-6)
    assert unstained_floor(dab + np.float32(0.5), far, None) == MAX_UNSTAINED_FLOOR_OD
    assert unstained_floor(dab, np.zeros(dab.shape, bool), None) == 0.0
