"""Cells from an H-DAB image: nuclei from hematoxylin, each grown into a cell with its membrane ring.

All sizes are in µm and converted to pixels from the image's µm/px, so the same parameters work at
0.25 and 0.5 µm/px. Pipeline (per image or tile):

1. hematoxylin optical density, smoothed (σ ``smoothing_um``), minus its local background (a white
   top-hat ``background_um`` wide), thresholded (Otsu over tissue, with a floor so that a nearly
   empty image does not turn its noise into nuclei; with hysteresis, ``nucleus_hysteresis``, so
   that pale nuclei that reach the threshold somewhere keep their whole extent); thin lines (dark
   DAB membranes leaking into the hematoxylin channel) are first removed by a grey opening, and
   stained membrane ridges (DAB) cut the nuclear mask: HER2 is not nuclear, so a brown line
   between two packed nuclei is a cell border;
2. touching nuclei split by a watershed on the distance transform, seeded by its peaks at least
   ``min_nucleus_separation_um`` apart;
3. ``cell_model="membrane"`` (default, :func:`grow_cells_to_membranes`): each nucleus grown up to
   its own stained membrane (a watershed of a DAB ridge map seeded by the nuclei and by the empty
   space around them, at most ``max_cell_radius_um``), the membrane ring being the cell's border band;
   ``cell_model="ring"`` (:func:`grow_cells`, steps 3-4 below): each nucleus grown by at most
   ``cell_expansion_um``; neighbours meet on the DAB ridge between
   them (a watershed on DAB plus a gentle distance slope, so that unstained neighbours meet
   half-way);
4. the membrane ring is the part of the cell more than ``perinuclear_um`` outside the nucleus, plus
   a band ``membrane_band_um`` wide along the cell's border (packed cells with thin cytoplasm
   meet their neighbours inside the perinuclear band); the rest of the band, from
   ``nuclear_edge_um`` out, is the perinuclear cytoplasm, used to tell membrane staining from a
   cytoplasmic blush.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CellParams:
    """Segmentation parameters, in µm (documented defaults for invasive breast carcinoma at 20-40x)."""

    #: Gaussian σ applied to the hematoxylin OD before thresholding (removes chromatin texture).
    smoothing_um: float = 1.0
    #: Hematoxylin structures narrower than twice this (µm) are removed before nuclei are found
    #: (membranes leaking into the channel; the smallest nuclei, lymphocytes, are ~6 µm). 0: off.
    line_removal_um: float = 1.5
    #: Lowest hematoxylin OD above the local background accepted as nuclear, whatever Otsu says.
    min_hematoxylin_od: float = 0.04
    #: Nuclear threshold as a fraction of Otsu's on the top-hat (below 1 keeps pale nuclei whole, but
    #: merges stroma into blobs on real IHC: 1.0 by default).
    otsu_fraction: float = 1.0
    #: Nuclei keep their extent down to this fraction of the threshold (hysteresis; 1.0: off). Whole
    #: nuclei keep the perinuclear band (the cytoplasm reference) off the nucleus, so that a blush is
    #: not read as membrane; on real 3+ (BCI) it finds more pale nuclei but lowers completeness a bit.
    nucleus_hysteresis: float = 0.6
    #: Width of the local-background window (µm): wider than the largest nucleus.
    background_um: float = 16.0
    #: Peaks of the distance transform closer than this are one nucleus (tumour nuclei are 8-15 µm).
    min_nucleus_separation_um: float = 4.0
    #: Nuclear objects smaller than this are dropped as debris (µm²).
    min_nucleus_area_um2: float = 8.0
    #: Holes in the nuclear mask up to this area (µm²; a pale vesicular centre, ~8 µm across at most)
    #: are filled; larger ones are lumina ringed by touching nuclei (real glands) and stay open.
    max_nucleus_hole_um2: float = 50.0
    #: Largest growth from the nucleus edge to the membrane (tumour cell cytoplasm is ~2-6 µm thick).
    cell_expansion_um: float = 5.0
    #: Perinuclear band (µm outside the nucleus) that counts as cytoplasm, not membrane ...
    perinuclear_um: float = 1.5
    #: ... except within this distance of the cell's border, which is always membrane ring (a
    #: blurred membrane at 20x is ~1-2 µm wide; the border sits on its ridge).
    membrane_band_um: float = 1.5
    #: The first µm outside the segmented nucleus edge is skipped for the cytoplasm measurement:
    #: the edge is blurred and a nucleus is often segmented a little small.
    nuclear_edge_um: float = 0.5
    #: No cell extends farther than this beyond its own nucleus: pixels it flooded through a
    #: nucleus-free basin (stroma, a lumen) go to the nearest nucleus instead. Twice the expansion:
    #: only gross leaks, as packed cells legitimately meet beyond a neighbour's reach.
    own_reach_um: float = 10.0
    #: Slope added to DAB when growing cells (OD per µm from the nucleus): ties split half-way.
    distance_weight_od_per_um: float = 0.02
    #: Gaussian σ on the DAB map before ring measurements (noise, not membrane width).
    dab_smoothing_um: float = 0.5
    #: A DAB ridge (white top-hat ``membrane_width_um`` wide) above this OD is a stained membrane:
    #: nuclei are not allowed to cross it, so that tightly packed 3+ cells keep one nucleus each
    #: (HER2 is not nuclear: a brown line between two blue nuclei is the cell border). 0: off.
    membrane_cut_od: float = 0.1
    #: Width of the structuring element that finds membrane ridges (wider than a blurred membrane,
    #: narrower than a cell's cytoplasm, so a uniform cytoplasmic blush is not a ridge).
    membrane_width_um: float = 3.0
    #: How cells are grown from their nuclei: ``membrane`` (default) floods a DAB ridge map from the
    #: nuclei and from the empty space around them, so that a cell stops at its own stained membrane
    #: however far it lies (columnar cells, large cytoplasm) and its border band is measured;
    #: ``ring`` is the earlier model, a band at a fixed distance (``cell_expansion_um``) around the
    #: nucleus. See :func:`grow_cells_to_membranes`.
    cell_model: str = "membrane"
    #: Membrane model: no cell reaches farther than this from its nucleus edge (a columnar cell's
    #: apical membrane lies ~8-12 µm from its basal nucleus at most).
    max_cell_radius_um: float = 12.0
    #: Membrane model: scale (σ, µm) of the Hessian that finds membrane lines in DAB (about half a
    #: blurred membrane's width at 20-40x).
    ridge_sigma_um: float = 1.0
    #: Membrane model: pixels farther than this from every nucleus edge where DAB (smoothed over
    #: ``background_smoothing_um``) stays below the image's unstained floor (:func:`unstained_floor`)
    #: plus ``background_dab_od`` are extracellular space
    #: (stroma, lumen) and seed a background that floods towards the cells: a cell and the background
    #: meet on the cell's membrane when it has one.
    background_min_um: float = 5.0
    background_dab_od: float = 0.06
    background_smoothing_um: float = 2.0
    #: Membrane model: µm/px of the grid on which cells are grown (distances, ridge map, watershed), by
    #: an integer factor from the image's (0 or finer than the image: the image's own). Cell borders
    #: then fall on that grid; the border band and the cytoplasm are cut at the image's resolution.
    #: 1 µm/px by default (a quarter of the pixels at 0.5 µm/px: ~25 % less CPU; the same categories on
    #: every real BCI/MIST image and synthetic slide, README "Whole cores and slides").
    growth_mpp: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CellSegmentation:
    """Label images (0 = background) sharing one id per cell: nucleus, whole cell, membrane ring."""

    nuclei: np.ndarray
    cells: np.ndarray
    rings: np.ndarray
    cytoplasm: np.ndarray
    hematoxylin_threshold: float

    @property
    def n_cells(self) -> int:
        return int(self.nuclei.max())


def _px(um: float, mpp: float) -> float:
    return um / mpp


def nucleus_threshold(hematoxylin: np.ndarray, tissue: np.ndarray | None, floor: float) -> float:
    """Otsu threshold of the (smoothed) hematoxylin OD over tissue, never below ``floor``."""
    from skimage.filters import threshold_otsu

    values = hematoxylin[tissue] if tissue is not None and tissue.any() else hematoxylin.ravel()
    values = values[values > floor * 0.5]
    if values.size < 64 or np.ptp(values) < 1e-6:
        return float(floor)
    if values.size > 200_000:  # a fixed subsample: same result each run, faster on big tiles
        values = values[:: values.size // 200_000]
    return float(max(floor, threshold_otsu(values)))


def membrane_ridges(dab: np.ndarray, mpp: float, params: CellParams | None = None) -> np.ndarray:
    """Stained membrane lines: DAB above its local floor (a grey opening ``membrane_width_um`` wide)."""
    from her2score.quantify.morphology import grey_opening_rect

    p = params or CellParams()
    width = max(3, round(_px(p.membrane_width_um, mpp)) | 1)
    ridge = dab - grey_opening_rect(dab, width, width)
    return ridge > p.membrane_cut_od


def segment_nuclei(
    hematoxylin: np.ndarray,
    mpp: float,
    tissue: np.ndarray | None = None,
    params: CellParams | None = None,
    dab: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Label nuclei in a hematoxylin OD map; returns the labels (int32) and the threshold used.

    With a DAB map, stained membrane ridges cut the nuclear mask (see ``membrane_cut_od``).
    """

    from her2score.quantify import morphology as morph
    from her2score.quantify.kernels import distance_to, gaussian, hysteresis, label4

    p = params or CellParams()
    smooth = gaussian(np.asarray(hematoxylin, dtype=np.float32), _px(p.smoothing_um, mpp))
    if p.line_removal_um > 0:
        # Dark DAB membranes leak into the hematoxylin channel (DAB does not follow Beer-Lambert
        # and real counterstains are greyer than the reference vector): a grey opening with a
        # disk removes such thin lines and keeps nuclei, which are several µm wide.
        from skimage.morphology import disk

        radius = max(1, round(_px(p.line_removal_um, mpp)))
        smooth = morph.grey_opening_disk(smooth, disk(radius))
    # White top-hat: hematoxylin above its local floor (a grey opening wider than any nucleus), so
    # that blue-grey stroma and uneven counterstain do not pass as nuclei, and pale nuclei inside
    # DAB-stained cytoplasm stand out against it.
    width = max(3, round(_px(p.background_um, mpp)))
    contrast = smooth - morph.grey_opening_rect(smooth, width, width)
    # Otsu splits dark from pale nuclei as readily as nuclei from background; a fraction of it keeps
    # the whole extent of pale (vesicular) tumour nuclei.
    thr = max(
        p.min_hematoxylin_od, p.otsu_fraction * nucleus_threshold(contrast, tissue, p.min_hematoxylin_od)
    )
    # Hysteresis: a nucleus must reach the threshold somewhere, and then keeps its whole extent down
    # to ``nucleus_hysteresis`` x the threshold. Pale vesicular tumour nuclei inside DAB-stained cells
    # (real 3+) are otherwise cut to their darkest chromatin and fail the tumour-size filter; stroma
    # that never reaches the threshold does not become nuclei.
    if p.nucleus_hysteresis < 1.0:
        mask = hysteresis(contrast, max(p.nucleus_hysteresis * thr, p.min_hematoxylin_od), thr)
    else:
        mask = contrast > thr
    if tissue is not None:
        mask &= tissue
    if dab is not None and p.membrane_cut_od > 0:
        # Only where DAB outweighs hematoxylin: the blurred edge of a nucleus inside a blushing
        # cytoplasm is a DAB step, not a membrane, and must not eat into the nucleus.
        mask &= ~(membrane_ridges(dab, mpp, p) & (dab > hematoxylin))
    mask = morph.binary_opening_cross(mask, iterations=max(1, round(_px(0.5, mpp))))
    # Only holes a nucleus can have (a vesicular nucleus's pale centre): a larger one is a gland
    # lumen ringed by touching nuclei, which filled would make the whole gland one "nucleus".
    mask = morph.fill_holes(mask, max(1, round(p.max_nucleus_hole_um2 / mpp**2)))
    min_px = max(2, round(p.min_nucleus_area_um2 / mpp**2))
    # One labelling serves the size filter and the split below: the components keep their numbers
    # (gaps where small ones were dropped; the final relabelling closes them, in the same order).
    components, n_comp = label4(mask)
    components = _drop_small(components, min_px)
    mask = components > 0
    if not mask.any():
        return np.zeros(hematoxylin.shape, dtype=np.int32), thr
    # In float64 with scipy's values to the last bit: peaks are ranked by these values, and equal or
    # nearly equal distances (symmetric shapes) must keep their order.
    dist = gaussian(distance_to(~mask, np.float64), 1.0)
    sep = max(1, round(_px(p.min_nucleus_separation_um, mpp) / 2))
    # Without ``labels`` (a per-object loop, slow): background has distance 0, so peaks cannot merge
    # across objects anyway.
    peaks = local_peaks(dist, sep, 0.5)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component with one seed is that seed's nucleus whole: only components with several seeds
    # need the watershed (same labels, as flooding never leaves a component).
    seeded = markers > 0
    seeds = np.bincount(components[seeded], minlength=n_comp + 1)
    several = seeds >= 2
    several[0] = False
    own = np.zeros(n_comp + 1, dtype=np.int32)
    own[components[seeded]] = markers[seeded]
    # Components without a peak (tiny, flat) are one nucleus each, numbered after the peaks.
    unseeded = np.flatnonzero(seeds[1:] == 0) + 1
    own[unseeded] = np.arange(len(peaks) + 1, len(peaks) + 1 + unseeded.size, dtype=np.int32)
    split = several[components]
    labels = np.where(mask & ~split, own[components], 0).astype(np.int32)
    if split.any():
        labels[split] = flood(-dist, markers, mask=split)[split]
    labels = _drop_small(labels, min_px)
    return _relabel(labels), thr


def flood(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Seeded watershed (scikit-image's, 4-connected, compiled: :mod:`~her2score.quantify.compiled`),
    with the same labels: marker pixels with no unlabelled neighbour never join the priority queue
    (they could not flood anything), so only the markers' frontier does."""
    from her2score.quantify.compiled import watershed
    from her2score.quantify.morphology import touches

    markers = np.asarray(markers, dtype=np.int32)
    if mask is not None:
        markers = np.where(mask, markers, 0)
    labelled = markers > 0
    interior = labelled & ~touches(~labelled if mask is None else mask & ~labelled)
    if not interior.any():
        return watershed(elevation, markers, mask=mask)
    allowed = ~interior if mask is None else mask & ~interior
    out = watershed(elevation, np.where(interior, 0, markers), mask=allowed)
    out[interior] = markers[interior]
    return out


def local_peaks(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """Peak coordinates ``(k, 2)``, highest first: the same as scikit-image's
    ``peak_local_max(image, min_distance, threshold_abs=threshold, exclude_border=False)``, faster
    (a running maximum for the local maxima, and the greedy spacing over precomputed neighbour pairs
    instead of one distance call per peak).

    A peak is a pixel equal to the maximum of its ``2 min_distance + 1`` square (edges repeated) and
    above ``threshold``; from the highest down, a peak removes the lower ones closer than
    ``min_distance`` (Chebyshev) to it.
    """
    from scipy.spatial import cKDTree

    from her2score.quantify.morphology import local_maximum

    local_max = local_maximum(image, 2 * min_distance + 1)
    is_max = image == local_max
    if is_max.all():  # a flat image has no peak
        return np.zeros((0, 2), dtype=np.int64)
    is_max &= image > threshold
    coords = np.transpose(np.nonzero(is_max))
    coords = coords[np.argsort(-image[is_max], kind="stable")]
    if min_distance <= 1 or len(coords) < 2:
        return coords
    pairs = cKDTree(coords).query_pairs(r=min_distance, p=np.inf, output_type="ndarray")
    if len(pairs):
        pairs = np.sort(pairs, axis=1)  # (higher, lower) peak
        gap = np.abs(coords[pairs[:, 0]] - coords[pairs[:, 1]]).max(axis=1)
        pairs = pairs[gap < min_distance]
    if not len(pairs):
        return coords
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    starts = np.searchsorted(pairs[:, 0], np.arange(len(coords) + 1))
    lower = pairs[:, 1]
    removed = np.zeros(len(coords), dtype=bool)
    for i in np.unique(pairs[:, 0]).tolist():
        if not removed[i]:
            removed[lower[starts[i] : starts[i + 1]]] = True
    return coords[~removed]


def _drop_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Zero the labelled objects with fewer than ``min_px`` pixels."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    if not small.any():
        return labels
    return np.where(small[labels], 0, labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..k in the order of their old ids (as ``relabel_sequential``, by a lookup)."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    if labels.dtype == np.int32 and present[1:].all():  # already 1..k
        return labels
    lut = np.cumsum(present).astype(np.int32)
    lut[~present] = 0
    return lut[labels]


def grow_cells(
    nuclei: np.ndarray, mpp: float, dab: np.ndarray | None = None, params: CellParams | None = None
) -> CellSegmentation:
    """Grow nuclei into cells and split each cell into perinuclear cytoplasm and membrane ring.

    With a DAB map, neighbouring cells meet on the DAB ridge between them (a watershed: a stained
    membrane is a ridge), so that a membrane is not handed to the wrong cell when a nucleus sits
    off-centre; without one (or where DAB is flat) they meet half-way.
    """
    from scipy import ndimage as ndi

    p = params or CellParams()
    # One distance transform serves all: the nearest nucleus (Voronoi split) and the distance to it.
    dist, (iy, ix) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
    dist_um = (dist * mpp).astype(np.float32)
    nearest = nuclei[iy, ix]
    reach = dist_um <= p.cell_expansion_um
    if dab is None:
        cells = np.where(reach, nearest, 0).astype(np.int32)
    else:
        # Distance from the nearest nucleus (µm) as a gentle slope, so that flat DAB splits half-way.
        elevation = dab.astype(np.float32) + np.float32(p.distance_weight_od_per_um) * dist_um
        cells = flood(elevation, nuclei, mask=reach)
        # A basin without a nucleus (stroma, a lumen, the gaps between stained rings) is flooded
        # by the first cell that spills into it: keep each cell within reach of its own nucleus
        # and hand the rest to the nearest nucleus.
        leak = _beyond_own_reach(cells, nuclei, mpp, p.own_reach_um)
        cells[leak] = nearest[leak]
    inner = dist_um <= max(p.perinuclear_um, mpp)
    # Tightly packed cells (high grade, thin cytoplasm) meet their neighbours inside the
    # perinuclear band: the band along the cell's own border is membrane whatever its distance
    # from the nucleus, so that every side of a packed cell has a ring on its border.
    border = cell_border_band(cells, mpp, p.membrane_band_um)
    rings = np.where(~inner | border, cells, 0).astype(np.int32)
    cytoplasm = np.where(
        inner & ~border & (dist_um > min(p.nuclear_edge_um, p.perinuclear_um - mpp)), cells, 0
    ).astype(np.int32)
    return CellSegmentation(
        nuclei=nuclei, cells=cells, rings=rings, cytoplasm=cytoplasm, hematoxylin_threshold=0.0
    )


def _beyond_own_reach(cells: np.ndarray, nuclei: np.ndarray, mpp: float, reach_um: float) -> np.ndarray:
    """Pixels farther than ``reach_um`` beyond the outermost pixel of their own cell's nucleus (only
    cells whose bounding box reaches past the limit are looked at pixel by pixel; compiled:
    :func:`~her2score.quantify.compiled.beyond_own_reach`)."""
    from her2score.quantify.compiled import beyond_own_reach

    return beyond_own_reach(cells, nuclei, mpp, reach_um)


def cell_border_band(cells: np.ndarray, mpp: float, width_um: float) -> np.ndarray:
    """Pixels of each cell within ``width_um`` of its border (a neighbour or the background)."""
    from her2score.quantify.morphology import binary_dilation_disk, disk_offsets

    inside = cells > 0
    border = np.zeros(cells.shape, dtype=bool)
    border[:-1] |= cells[:-1] != cells[1:]
    border[1:] |= cells[1:] != cells[:-1]
    border[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    border &= inside
    # Within ``width_um`` of the border or the outside: a disk dilation (the same pixels as a
    # distance transform thresholded at that distance, ~50x faster).
    return inside & binary_dilation_disk(~inside | border, disk_offsets(width_um, mpp))


def ridge_map(dab: np.ndarray, mpp: float, sigma_um: float) -> np.ndarray:
    """Bright lines of a DAB OD map: ``-σ² x`` the most negative Hessian eigenvalue (0 where none).

    A blurred membrane is a ridge (strong negative curvature across it); a uniform blush or the flat
    inside of a stained cytoplasm has none. In OD units (σ²-normalised), about the line's contrast.
    """
    from her2score.quantify.kernels import gaussian

    sigma = max(sigma_um / mpp, 0.7)
    img = np.asarray(dab, dtype=np.float32)
    hyy = gaussian(img, sigma, order=(2, 0))
    hxx = gaussian(img, sigma, order=(0, 2))
    hxy = gaussian(img, sigma, order=(1, 1))
    # -(half trace - sqrt(((hyy - hxx) / 2)² + hxy²)), in place (the same float32 operations).
    root = np.subtract(hyy, hxx)
    root /= 2
    root *= root
    hxy *= hxy
    root += hxy
    np.sqrt(root, out=root)
    hyy += hxx
    hyy /= 2
    hyy -= root
    np.negative(hyy, out=hyy)
    np.maximum(hyy, 0, out=hyy)
    hyy *= np.float32(sigma**2)
    return hyy


def grow_cells_to_membranes(
    nuclei: np.ndarray,
    mpp: float,
    dab: np.ndarray,
    tissue: np.ndarray | None = None,
    params: CellParams | None = None,
) -> CellSegmentation:
    """Grow nuclei into cells that stop at their own DAB membrane; split off border band and cytoplasm.

    A seeded watershed on a membrane-enhanced image (:func:`ridge_map` plus the DAB itself and a
    gentle slope with the distance from the nucleus): neighbours meet on the stained line between
    them, and the empty space around cells (far from every nucleus, unstained, or off the tissue)
    floods in as background to meet a cell on its outer membrane. So a columnar or large cell gets
    its whole membrane, however far from its nucleus, bounded by ``max_cell_radius_um``. The membrane
    ring is the band ``membrane_band_um`` wide along the cell's border (where its membrane lies);
    the cytoplasm, the inside of the cell between the nucleus edge and that band.
    """
    from her2score.quantify.morphology import binary_dilation_disk, disk_offsets

    p = params or CellParams()
    factor = int(p.growth_mpp / mpp + 1e-9) if p.growth_mpp > 0 else 1
    if factor >= 2:
        cells = _grow_on_coarser_grid(nuclei, mpp, dab, tissue, p, factor)
    else:
        cells = _flood_cells(nuclei, mpp, dab, tissue, p)
    border = cell_border_band(cells, mpp, p.membrane_band_um)
    rings = np.where(border, cells, 0).astype(np.int32)
    # The cytoplasm starts ``nuclear_edge_um`` outside the nucleus (a disk dilation: the pixels a
    # distance transform would put within that distance).
    near_nucleus = binary_dilation_disk(nuclei > 0, disk_offsets(p.nuclear_edge_um, mpp))
    cytoplasm = np.where(~border & ~near_nucleus, cells, 0).astype(np.int32)
    return CellSegmentation(
        nuclei=nuclei, cells=cells, rings=rings, cytoplasm=cytoplasm, hematoxylin_threshold=0.0
    )


def _flood_cells(
    nuclei: np.ndarray, mpp: float, dab: np.ndarray, tissue: np.ndarray | None, p: CellParams
) -> np.ndarray:
    """The cell labels of :func:`grow_cells_to_membranes` (the watershed and its leak check)."""
    from her2score.quantify.kernels import distance_to, gaussian

    n = int(nuclei.max())
    if math.frexp(mpp)[0] == 0.5:  # a power of two (0.5, 0.25 µm/px): scaling float32 is exact
        dist_um = distance_to(nuclei > 0) * np.float32(mpp)
    else:  # as scipy: float64 distances times mpp, rounded once
        dist_um = (distance_to(nuclei > 0, np.float64) * mpp).astype(np.float32)
    smooth = gaussian(np.asarray(dab, dtype=np.float32), p.background_smoothing_um / mpp)
    far = dist_um > p.background_min_um
    background = (dist_um > p.max_cell_radius_um) | (
        far & (smooth < unstained_floor(smooth, far, tissue) + p.background_dab_od)
    )
    if tissue is not None:
        background |= ~tissue & (nuclei == 0)
    markers = nuclei.astype(np.int32).copy()
    markers[background] = n + 1
    elevation = (
        ridge_map(dab, mpp, p.ridge_sigma_um)
        + np.float32(0.5) * np.asarray(dab, dtype=np.float32)
        + np.float32(p.distance_weight_od_per_um) * dist_um
    )
    cells = flood(elevation, markers)
    cells[cells == n + 1] = 0
    # A cell that flooded round a neighbour into a basin beyond its own reach gives it back.
    leak = _beyond_own_reach(cells, nuclei, mpp, p.max_cell_radius_um)
    if leak.any():
        ly, lx = np.nonzero(leak)
        near = dist_um[ly, lx] <= p.max_cell_radius_um
        cells[ly, lx] = np.where(near, nearest_label(nuclei, ly, lx, p.max_cell_radius_um / mpp), 0)
    return cells


#: The unstained DAB floor of an image (:func:`unstained_floor`) is this quantile of the smoothed DAB far
#: from every nucleus, capped at :data:`MAX_UNSTAINED_FLOOR_OD`.
UNSTAINED_FLOOR_QUANTILE = 0.25
MAX_UNSTAINED_FLOOR_OD = 0.15


def unstained_floor(
    smooth_dab: np.ndarray,
    far: np.ndarray,
    tissue: np.ndarray | None,
    quantile: float = UNSTAINED_FLOOR_QUANTILE,
) -> float:
    """DAB OD that an image reads where nothing is stained: the ``quantile`` (the lower quartile) of the
    smoothed DAB over tissue in ``far`` (far from every nucleus: stroma, lumina), at most
    :data:`MAX_UNSTAINED_FLOOR_OD`; 0 when there is no such tissue.

    Real scans read 0.02-0.17 OD of "DAB" on unstained stroma (a grey or dim scan, a tan tint; see
    :func:`~her2score.quantify.membrane.background_dab`): an absolute background threshold
    (``background_dab_od``) then finds no extracellular space, and cells at the edge of a nest grow
    past their membrane into the stroma, where their border (and so their measured ring) is unstained.
    """
    region = far if tissue is None else far & tissue
    values = smooth_dab[region]
    if values.size < 100:
        return 0.0
    values = values[:: max(1, values.size // 200_000)]
    return float(min(max(np.quantile(values, quantile), 0.0), MAX_UNSTAINED_FLOOR_OD))


def nearest_label(
    labels: np.ndarray, yy: np.ndarray, xx: np.ndarray, within_px: float | None = None
) -> np.ndarray:
    """The label of the nearest labelled pixel to each point ``(yy, xx)`` (Euclidean; what
    ``distance_transform_edt(labels == 0, return_indices=True)`` points at, up to ties), from a KD-tree
    of the labelled pixels on an object's edge (the nearest pixel of an object from outside is one).
    With ``within_px``, only points that have a labelled pixel within that distance get theirs right
    (the tree holds only the edge pixels near the points)."""
    from scipy.spatial import cKDTree

    from her2score.quantify.morphology import local_maximum, touches

    edge = (labels > 0) & touches(labels == 0)
    if within_px is not None:
        points = np.zeros(labels.shape, dtype=np.uint8)
        points[yy, xx] = 1
        edge &= local_maximum(points, 2 * int(np.ceil(within_px)) + 1).view(bool)
    ey, ex = np.nonzero(edge)
    if not ey.size:  # objects filling the image, or none near: their own pixels
        ey, ex = np.nonzero(labels > 0)
    _, idx = cKDTree(np.column_stack([ey, ex])).query(np.column_stack([yy, xx]))
    return labels[ey[idx], ex[idx]]


def _grow_on_coarser_grid(
    nuclei: np.ndarray, mpp: float, dab: np.ndarray, tissue: np.ndarray | None, p: CellParams, k: int
) -> np.ndarray:
    """:func:`_flood_cells` on a grid ``k`` times coarser (DAB averaged over k x k blocks, nuclei and
    tissue sampled at block centres, every nucleus keeping at least its centre block), the labels
    brought back to the image's grid, each nucleus's own pixels its own."""
    h, w = nuclei.shape
    rows, cols = -(-h // k), -(-w // k)
    pad = ((0, rows * k - h), (0, cols * k - w))
    coarse_dab = np.pad(dab.astype(np.float32), pad, mode="edge").reshape(rows, k, cols, k).mean(axis=(1, 3))
    centre = (slice(k // 2, None, k), slice(k // 2, None, k))
    coarse_nuclei = np.pad(nuclei, pad)[centre]
    n = int(nuclei.max())
    missing = np.ones(n + 1, dtype=bool)
    missing[coarse_nuclei.ravel()] = False
    missing[0] = False
    if missing.any():  # a nucleus no block centre fell on is seeded at its centroid's block
        yy, xx = np.nonzero(nuclei)
        ids = nuclei[yy, xx]
        count = np.maximum(np.bincount(ids, minlength=n + 1), 1)
        cy = (np.bincount(ids, weights=yy, minlength=n + 1) / count).astype(np.int64) // k
        cx = (np.bincount(ids, weights=xx, minlength=n + 1) / count).astype(np.int64) // k
        lost = np.flatnonzero(missing)
        coarse_nuclei[cy[lost], cx[lost]] = lost
    coarse_tissue = None if tissue is None else np.pad(tissue, pad)[centre]
    coarse = _flood_cells(coarse_nuclei, mpp * k, coarse_dab, coarse_tissue, p)
    cells = np.repeat(np.repeat(coarse, k, axis=0), k, axis=1)[:h, :w]
    own = nuclei > 0
    cells[own] = nuclei[own]
    return np.ascontiguousarray(cells)


def segment_cells(
    hematoxylin: np.ndarray,
    mpp: float,
    tissue: np.ndarray | None = None,
    params: CellParams | None = None,
    dab: np.ndarray | None = None,
) -> CellSegmentation:
    """Nuclei, cells, membrane rings and perinuclear cytoplasm from hematoxylin (and DAB) OD maps.

    ``params.cell_model`` chooses how cells grow: ``membrane`` (to their stained membrane, needs
    ``dab``; :func:`grow_cells_to_membranes`) or ``ring`` (a fixed band; :func:`grow_cells`).
    """
    p = params or CellParams()
    if p.cell_model not in ("membrane", "ring"):
        raise ValueError(f"cell_model must be 'membrane' or 'ring' (got {p.cell_model!r})")
    nuclei, thr = segment_nuclei(hematoxylin, mpp, tissue, p, dab=dab)
    if p.cell_model == "membrane" and dab is not None and nuclei.max() > 0:
        seg = grow_cells_to_membranes(nuclei, mpp, dab, tissue, p)
    else:
        seg = grow_cells(nuclei, mpp, dab, p)
    seg.hematoxylin_threshold = thr
    return seg
