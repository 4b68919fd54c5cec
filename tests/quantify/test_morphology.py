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


@pytest.mark.parametrize("shape", [(64, 90), (7, 5)])
def test_gaussian_matches_scipy(shape: tuple[int, int]) -> None:
    from her2score.quantify import compiled, kernels

    a = _field(shape, 8)
    for sigma, order in ((1.0, (0, 0)), (2.0, (2, 0)), (2.0, (0, 2)), (2.0, (1, 1)), (4.0, (0, 0))):
        for dtype in (np.float32, np.float64):
            ref = ndi.gaussian_filter(a.astype(dtype), sigma, order=order)
            assert np.array_equal(compiled.gaussian(a.astype(dtype), sigma, order), ref)  # to the last bit
        assert np.array_equal(kernels.gaussian(a.astype(np.float64), sigma, order), ref)
        fast = kernels.gaussian(a, sigma, order)  # float32 by OpenCV: within float32 rounding
        ref32 = ndi.gaussian_filter(a, sigma, order=order)
        assert fast.dtype == np.float32
        assert np.abs(fast - ref32).max() <= 1e-6 * max(1.0, float(np.abs(ref32).max()))


def test_distance_box_mean_and_labels_match_scipy() -> None:
    from skimage.filters import apply_hysteresis_threshold

    from her2score.quantify import kernels

    a = _field((70, 90), 9)
    m = a > np.percentile(a, 70)
    ref = ndi.distance_transform_edt(~m)
    assert np.array_equal(kernels.distance_to(m, np.float64), ref)
    assert np.array_equal(kernels.distance_to(m), ref.astype(np.float32))
    empty = ndi.distance_transform_edt(np.ones((4, 5)))
    assert np.array_equal(kernels.distance_to(np.zeros((4, 5), bool), np.float64), empty)
    for size in (1, 2, 3, 5):
        assert np.allclose(kernels.box_mean(a, size), ndi.uniform_filter(a, size), rtol=0, atol=1e-6)
    labels, n = kernels.label4(m)
    ref_labels, ref_n = ndi.label(m)
    assert n == ref_n
    assert np.array_equal(labels, ref_labels)
    lo, hi = np.percentile(a, 60), np.percentile(a, 80)
    assert np.array_equal(kernels.hysteresis(a, lo, hi), apply_hysteresis_threshold(a, lo, hi))


def test_watershed_matches_scikit_image_on_plateaus_and_float64() -> None:
    from skimage.segmentation import watershed

    from her2score.quantify.compiled import watershed as compiled_watershed

    rng = np.random.default_rng(10)
    for trial in range(3):
        elevation = _field((80, 100), 11 + trial, 2.0)
        if trial == 1:  # plateaus: ties between markers and by age
            elevation = np.round(elevation * 40).astype(np.float32)
        if trial == 2:
            elevation = -elevation.astype(np.float64)
        markers = np.zeros(elevation.shape, dtype=np.int32)
        for i in range(1, 30):
            y, x = rng.integers(0, 80), rng.integers(0, 100)
            markers[y, x] = i
        mask = elevation < np.percentile(elevation, 85)
        assert np.array_equal(compiled_watershed(elevation, markers), watershed(elevation, markers))
        assert np.array_equal(
            compiled_watershed(elevation, markers, mask), watershed(elevation, markers, mask=mask)
        )


def test_own_reach_and_nearest_label_match_numpy() -> None:
    from her2score.quantify.cells import nearest_label
    from her2score.quantify.compiled import beyond_own_reach

    nuclei = np.zeros((60, 80), dtype=np.int32)
    nuclei[10:14, 10:14] = 1
    nuclei[40:45, 50:53] = 2
    nuclei[12:16, 60:62] = 3
    cells = nuclei.copy()
    cells[5:30, 5:40] = np.where(nuclei[5:30, 5:40] == 0, 1, nuclei[5:30, 5:40])  # cell 1 reaches far
    cells[35:50, 45:58] = np.where(nuclei[35:50, 45:58] == 0, 2, nuclei[35:50, 45:58])
    n = 3
    yy, xx = np.nonzero(nuclei)
    ids = nuclei[yy, xx] - 1
    count = np.bincount(ids, minlength=n)
    cy, cx = np.bincount(ids, yy, n) / count, np.bincount(ids, xx, n) / count
    radius = np.zeros(n)
    np.maximum.at(radius, ids, np.hypot(yy - cy[ids], xx - cx[ids]))
    py, px = np.nonzero(cells)
    own = cells[py, px] - 1
    ref = np.zeros(cells.shape, dtype=bool)
    ref[py, px] = np.hypot(py - cy[own], px - cx[own]) - radius[own] > 6.0
    assert ref.any()
    assert np.array_equal(beyond_own_reach(cells, nuclei, 0.5, 3.0), ref)
    dist = ndi.distance_transform_edt(nuclei == 0)
    qy, qx = np.nonzero(nuclei == 0)
    got = nearest_label(nuclei, qy, qx)
    # the label found is at the nearest distance (which nucleus wins a tie is not specified)
    d_got = np.array(
        [
            np.hypot(*(np.argwhere(nuclei == lab) - [y, x]).T).min()
            for y, x, lab in zip(qy, qx, got, strict=True)
        ]
    )
    assert np.allclose(d_got, dist[qy, qx])


def test_cell_statistics_match_numpy() -> None:
    import warnings

    from her2score.quantify.membrane import _median_stained_peak, label_quantile

    rng = np.random.default_rng(12)
    ids = rng.integers(0, 50, 3000)
    values = rng.normal(0.2, 0.1, 3000).astype(np.float32)
    for q in (0.1, 0.25, 0.5):
        ref = np.zeros(52)
        for i in range(52):
            v = np.sort(values[ids == i])
            if v.size:
                ref[i] = v[int(np.floor(q * (v.size - 1)))]
        assert np.array_equal(label_quantile(ids, values, 52, q), ref)
    peaks = rng.random((40, 16)).astype(np.float32)
    stained = rng.random((40, 16)) < 0.5
    stained[:3] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nan_to_num(np.nanmedian(np.where(stained, peaks, np.nan), axis=1), nan=0.0)
    assert np.array_equal(_median_stained_peak(stained, peaks), ref)


def test_nucleus_shapes_match_bincount_moments() -> None:
    from her2score.quantify.membrane import nucleus_shapes

    labels, n = ndi.label(_field((60, 70), 13, 2.0) > 0.5)
    hema = _field((60, 70), 14)
    shapes = nucleus_shapes(labels, hema)
    yy, xx = np.nonzero(labels)
    ids = labels[yy, xx] - 1
    area = np.bincount(ids, minlength=n).astype(np.float64)
    cy = np.bincount(ids, weights=yy, minlength=n) / area
    dy = yy - cy[ids]
    assert np.array_equal(shapes["area"], area)
    assert np.array_equal(shapes["y"], cy)
    assert np.array_equal(shapes["hematoxylin"], np.bincount(ids, weights=hema[yy, xx], minlength=n) / area)
    myy = np.bincount(ids, weights=dy * dy, minlength=n) / area + 1 / 12
    assert np.all(shapes["major"] >= 4 * np.sqrt(myy) - 1e-9)


def test_half_maximum_sums_match_numpy() -> None:
    """The compiled half-maximum passes give the ``np.bincount`` values, core labels included."""
    from her2score.quantify.compiled import half_maximum_sums

    labels, n = ndi.label(_field((70, 90), 3, 2.0) > 0.5)
    density = _field((70, 90), 4, 1.0)
    flat = labels.ravel()
    inside = flat > 0
    ids, vals = flat[inside] - 1, density.ravel()[inside]
    mean = np.bincount(ids, vals, n) / np.maximum(np.bincount(ids, minlength=n), 1)
    upper = vals >= mean[ids]
    plateau = np.bincount(ids[upper], vals[upper], n) / np.maximum(np.bincount(ids[upper], minlength=n), 1)
    core = vals >= 0.5 * plateau[ids]
    ref = np.zeros(flat.shape, dtype=np.int32)
    ref[np.flatnonzero(inside)[core]] = flat[inside][core]
    area, got_plateau, got_core = half_maximum_sums(labels, density, n, True)
    assert n > 3
    assert 0 < core.mean() < 1
    assert np.array_equal(area, np.bincount(ids[core], minlength=n).astype(np.float64))
    assert np.array_equal(got_plateau, plateau)
    assert np.array_equal(got_core, ref.reshape(labels.shape))
    assert half_maximum_sums(labels, density, n, False)[2] is None
