"""The fast morphology and flooding helpers give scipy's / scikit-image's results, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from her2score.quantify import morphology as morph
from her2score.quantify.cells import flood, local_peaks


def _field(shape: tuple[int, int], seed: int, sigma: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape, dtype=np.float32), sigma)


@pytest.mark.parametrize("shape", [(61, 83), (5, 9)])
def test_grey_filters_match_scipy(shape: tuple[int, int]) -> None:
    from skimage.morphology import disk

    a = _field(shape, 0)
    for h, w in ((32, 32), (7, 7), (3, 6), (1, 4)):
        assert np.array_equal(morph.grey_erosion_rect(a, h, w), ndi.grey_erosion(a, size=(h, w)))
        assert np.array_equal(morph.grey_dilation_rect(a, h, w), ndi.grey_dilation(a, size=(h, w)))
        assert np.array_equal(morph.grey_opening_rect(a, h, w), ndi.grey_opening(a, size=(h, w)))
    for r in (1, 3, 4):
        assert np.array_equal(morph.grey_opening_disk(a, disk(r)), ndi.grey_opening(a, footprint=disk(r)))


def test_binary_helpers_match_scipy() -> None:
    a = _field((70, 90), 1)
    m = a > np.percentile(a, 65)
    for radius, pixel in ((1.5, 0.5), (1.5, 0.25), (1.0, 0.4), (3.7, 1.0)):
        ref = ndi.distance_transform_edt(~m) * pixel <= radius
        assert np.array_equal(morph.binary_dilation_disk(m, morph.disk_offsets(radius, pixel)), ref)
    assert np.array_equal(morph.fill_holes(m), ndi.binary_fill_holes(m))
    assert np.array_equal(morph.fill_holes(~m), ndi.binary_fill_holes(~m))
    holes, _ = ndi.label(ndi.binary_fill_holes(m) & ~m)  # 4-connected, as the background is labelled
    for limit in (1, 5, 40):
        small = holes > 0
        small &= np.bincount(holes.ravel())[holes] <= limit
        assert np.array_equal(morph.fill_holes(m, limit), m | small)
    for k in (1, 2):
        assert np.array_equal(morph.binary_opening_cross(m, k), ndi.binary_opening(m, iterations=k))


def test_local_peaks_match_peak_local_max() -> None:
    from skimage.feature import peak_local_max

    for seed in range(3):
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(_field((120, 140), seed, 3.0) > 0.5), 1.0)
        for sep in (1, 2, 4):
            ref = peak_local_max(dist, min_distance=sep, threshold_abs=0.5, exclude_border=False)
            assert np.array_equal(local_peaks(dist, sep, 0.5), ref)
    assert len(local_peaks(np.ones((9, 9)), 2, 0.5)) == 0


def test_flood_matches_watershed() -> None:
    from skimage.segmentation import watershed

    elevation = _field((90, 110), 4, 2.0)
    rng = np.random.default_rng(5)
    markers = np.zeros(elevation.shape, dtype=np.int32)
    for i in range(1, 25):  # blobs of a few pixels, some touching, and one large marker region
        y, x = rng.integers(3, 87), rng.integers(3, 107)
        markers[y - 2 : y + 3, x - 2 : x + 3] = i
    markers[:, :12] = 99
    mask = elevation < np.percentile(elevation, 90)
    assert np.array_equal(flood(elevation, markers), watershed(elevation, markers))
    assert np.array_equal(flood(elevation, markers, mask=mask), watershed(elevation, markers, mask=mask))


def test_lumen_distance_matches_distance_transform() -> None:
    from her2score.quantify.membrane import EMPTY_OD, lumen_distance

    hema = np.clip(_field((80, 100), 6, 3.0) - 0.45, 0, None)
    dab = np.zeros_like(hema)
    rng = np.random.default_rng(7)
    y, x = rng.uniform(0, 79, 40), rng.uniform(0, 99, 40)
    empty = ndi.uniform_filter(hema + dab, 2) < EMPTY_OD
    assert empty.any()
    assert not empty.all()
    ref = ndi.distance_transform_edt(~empty)[np.round(y).astype(int), np.round(x).astype(int)] * 0.5
    assert np.array_equal(lumen_distance(hema, dab, 0.5, y, x), ref)


def test_sector_contacts_rows_are_unique_and_sorted() -> None:
    from her2score.quantify.membrane import sector_contacts

    cells = np.repeat(np.repeat(np.arange(1, 13, dtype=np.int32).reshape(3, 4), 9, axis=0), 9, axis=1)
    cy, cx = np.repeat([4.0, 13.0, 22.0], 4), np.tile([4.0, 13.0, 22.0, 31.0], 3)
    rows = sector_contacts(cells, cy, cx, 16)
    assert len(rows)
    assert np.array_equal(rows, np.unique(rows, axis=0))
    assert set(map(tuple, rows[:, [0, 2]].tolist())) >= {(0, 1), (1, 0), (0, 4), (4, 0)}
