"""The quantifier end to end: one in-memory image (:func:`quantify_image`), and one file
(:func:`quantify_file`): a patch in one piece, anything larger than about a tile (a core, a field, a
whole slide) tile by tile over all its tissue, streaming, with heterogeneity by region
(:mod:`~her2score.quantify.tiled`, in this process or over worker processes started by ``forkserver``).

Per image: stains separated with H-DAB vectors (per-image Macenko estimate when plausible, else the
defaults; :mod:`her2score.stain.detect`), an H&E image passed by mistake refused
(:class:`~her2score.errors.StainError`), cells segmented (:mod:`~her2score.quantify.cells`),
membranes measured (:mod:`~her2score.quantify.membrane`) and the tumour cells scored
(:mod:`~her2score.quantify.scoring`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import NoTissueError, StainError
from her2score.quantify.cells import CellParams, CellSegmentation, segment_cells
from her2score.quantify.membrane import measure_cells
from her2score.quantify.scoring import ScoreAccumulator
from her2score.quantify.thresholds import Thresholds
from her2score.stain.deconvolution import StainMatrix, rgb_to_od
from her2score.stain.detect import choose_stain_vectors, looks_like_he, macenko

#: Less tissue than this (µm²) in an image or a slide's overview: no tissue, nothing to score (about a
#: 22 µm square). Not :data:`her2score.slide.tissue.MIN_TISSUE_UM2`, the smallest tissue piece kept.
MIN_IMAGE_TISSUE_UM2 = 500.0


def tissue_mask_for(rgb: np.ndarray, mpp: float, mask_mpp: float = 2.0) -> np.ndarray:
    """Tissue mask at the image's size, computed at ~``mask_mpp`` µm/px (fast) and scaled back.

    Uses the slide engineer's detector (pen ink, debris, shadows excluded) when present, else a
    simple optical-density threshold.
    """
    factor = max(1, int(mask_mpp / mpp))
    small = rgb[::factor, ::factor] if factor > 1 else rgb
    try:
        from her2score.slide.tissue import tissue_mask
    except ImportError:
        mask = _simple_tissue_mask(small)
    else:
        mask = np.asarray(tissue_mask(np.ascontiguousarray(small), mpp * factor), dtype=bool)
    if factor > 1:
        mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[: rgb.shape[0], : rgb.shape[1]]
    return mask


def _simple_tissue_mask(rgb: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    od = rgb_to_od(rgb).sum(axis=-1)
    mask = ndi.uniform_filter(od, 9) > 0.12
    return ndi.binary_opening(mask, iterations=2)


@dataclass
class ImageQuantification:
    """Everything measured on one in-memory image (patch, core or tile)."""

    cells: Any
    segmentation: CellSegmentation
    tissue: np.ndarray
    dab: np.ndarray
    stain_source: str
    accumulator: ScoreAccumulator


def quantify_image(
    rgb: np.ndarray,
    mpp: float,
    thresholds: Thresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str | StainMatrix = "auto",
    path: str | Path | None = None,
    check_stain: bool = True,
    require_tissue: bool = True,
    tissue: np.ndarray | None = None,
    accumulate: bool = True,
) -> ImageQuantification:
    """Segment and score the cells of one RGB image at ``mpp`` µm/px.

    ``accumulate=False`` leaves the result's accumulator empty (a tile of a larger image is summed
    over its core cells by its caller, :class:`~her2score.quantify.tiled.TileScorer`).
    Raises :class:`NoTissueError` (no tissue), :class:`StainError` (H&E image, or no nuclei).
    """
    from her2score.quantify.kernels import gaussian
    from her2score.stain.deconvolution import separate_stains

    t = thresholds or Thresholds()
    p = cell_params or CellParams()
    rgb = np.ascontiguousarray(rgb[..., :3])
    tissue = tissue_mask_for(rgb, mpp) if tissue is None else tissue
    if require_tissue and tissue.sum() * mpp**2 < MIN_IMAGE_TISSUE_UM2:
        raise NoTissueError("no tissue found in the image", path)
    estimate = macenko(rgb) if check_stain or stains == "auto" else None
    if check_stain and looks_like_he(rgb, tissue, estimate):
        raise StainError("looks like H&E (eosin-pink, no DAB): pass an HER2 IHC image", path)
    if isinstance(stains, StainMatrix):
        matrix, source = stains, "given"
    else:
        matrix, source = choose_stain_vectors(rgb, stains, estimate)
    conc = separate_stains(rgb, matrix)
    hema = conc["hematoxylin"]
    dab = gaussian(conc[matrix.names[1]], p.dab_smoothing_um / mpp)
    seg = segment_cells(hema, mpp, tissue, p, dab=dab)
    if require_tissue and seg.n_cells == 0:
        raise StainError(
            "no nuclei found in the hematoxylin channel (no counterstain, or blank tissue)", path
        )
    cells = measure_cells(seg, hema, dab, mpp, t)
    acc = ScoreAccumulator()
    if accumulate:
        acc.add_cells(cells)
        acc.add_tissue(dab, tissue, t)
    return ImageQuantification(cells, seg, tissue, dab, source, acc)


#: Work at ~0.5 µm/px: finer scans are read downsampled (cells stay > 10 px across), coarser ones as
#: they are, down to 1 µm/px; beyond that membranes cannot be resolved.
WORK_MPP = 0.5
FINEST_NATIVE_MPP = 0.4
COARSEST_MPP = 1.0
#: Images up to this many pixels (at the work resolution), about one tile with its overlaps, are scored
#: in one piece; larger ones (cores, fields, slides) over all their tissue in tiles
#: (:mod:`~her2score.quantify.tiled`).
WHOLE_IMAGE_PIXELS = 1152 * 1152


@dataclass
class FileResult:
    """What :func:`quantify_file` wrote and measured for one image or slide."""

    row: dict[str, Any]
    cells_path: Path
    overlay_path: Path


def work_mpp_for(level0_mpp: float, path: str | Path | None = None) -> float:
    """The µm/px at which cells are measured for a file scanned at ``level0_mpp``."""
    from her2score.errors import SlideError

    if level0_mpp > COARSEST_MPP:
        raise SlideError(
            f"resolution {level0_mpp:g} µm/px is too coarse to see cell membranes (need ≤ {COARSEST_MPP:g})",
            path,
        )
    return level0_mpp if level0_mpp >= FINEST_NATIVE_MPP else WORK_MPP


def quantify_file(
    path: str | Path,
    out_dir: str | Path,
    mpp: float | None = None,
    thresholds: Thresholds | None = None,
    cell_params: CellParams | None = None,
    stains: str = "auto",
    workers: int = 0,
    progress: Any = None,
    stem: str | None = None,
    whole_image_pixels: int = WHOLE_IMAGE_PIXELS,
    marker: str = "her2",
    nuclear_thresholds: Any = None,
) -> FileResult:
    """Score one image or slide and write ``<stem>.cells.parquet`` and ``<stem>.overlay.png``.

    ``marker``: ``her2`` (membranes, the default) or a nuclear marker (``er``, ``pr``, ``ki67``:
    :func:`her2score.quantify.nuclear.quantify_nuclear_file`, with ``nuclear_thresholds``).

    Small images (patches up to ``whole_image_pixels`` at the work resolution) are scored in one
    piece; larger ones (TMA cores, fields, whole slides) tile by tile over all their tissue, streaming
    (memory stays flat), over ``workers`` processes, with ``<stem>.regions.csv`` and
    ``<stem>.regions.png`` (:mod:`~her2score.quantify.tiled`). ``progress`` is an optional
    ``rich.progress.Progress`` for a per-tile bar; ``stem`` names the outputs (default: the file's).
    Workers start by ``forkserver`` (:data:`START_METHOD`): a script that passes ``workers`` > 0 needs
    the ``if __name__ == "__main__":`` guard.
    """
    from her2score.slide import open_slide

    if marker != "her2":
        from her2score.quantify.nuclear import quantify_nuclear_file

        return quantify_nuclear_file(
            path,
            out_dir,
            marker,
            mpp,
            thresholds,
            nuclear_thresholds,
            cell_params,
            stains,
            progress,
            stem,
            whole_image_pixels,
            workers,
        )
    t = thresholds or Thresholds()
    p = cell_params or CellParams()
    path = Path(path)
    out_dir = Path(out_dir)
    with open_slide(path, mpp=mpp) as slide:
        level0 = slide.require_mpp()
        work = work_mpp_for(level0, path)
        scale = level0 / work
        stem = stem or path.stem
        if slide.width * slide.height * scale * scale <= whole_image_pixels:
            return _quantify_whole(slide, path, stem, out_dir, work, t, p, stains)
        return quantify_tiled_file(
            slide, path, stem, out_dir, mpp, work, "her2", t, p, stains, workers, progress
        )


def quantify_tiled_file(*args: Any, **kwargs: Any) -> FileResult:
    """:func:`her2score.quantify.tiled.quantify_tiled` as a :class:`FileResult` (same arguments)."""
    from her2score.quantify.tiled import quantify_tiled

    out = quantify_tiled(*args, **kwargs)
    return FileResult(out.row, out.cells_path, out.overlay_path)


def _row_head(path: Path, slide: Any, work: float, mode: str, stain_source: str) -> dict[str, Any]:
    return {
        "image": str(path),
        "status": "ok",
        "error": "",
        "mpp": slide.require_mpp(),
        "work_mpp": work,
        "mode": mode,
        "stain_vectors": stain_source,
    }


def _cells_to_level0(cells: Any, factor: float, dx: float = 0.0, dy: float = 0.0) -> Any:
    cells = cells.copy()
    cells["x"] = (cells["x"] * factor + dx).astype(np.float32)
    cells["y"] = (cells["y"] * factor + dy).astype(np.float32)
    return cells


def _quantify_whole(
    slide: Any, path: Path, stem: str, out_dir: Path, work: float, t: Thresholds, p: CellParams, stains: str
) -> FileResult:
    from her2score.io import atomic_path, write_png
    from her2score.quantify.overlay import cell_overlay

    rgb = slide.read_bounds((0, 0, slide.width, slide.height), work)
    result = quantify_image(rgb, work, t, p, stains=stains, path=path)
    row = _row_head(path, slide, work, "image", result.stain_source) | result.accumulator.summary(t)
    cells = _cells_to_level0(result.cells, work / slide.require_mpp())
    cells_path = out_dir / f"{stem}.cells.parquet"
    with atomic_path(cells_path) as tmp:
        cells.to_parquet(tmp, index=False)
    overlay_path = write_png(
        out_dir / f"{stem}.overlay.png", cell_overlay(rgb, result.cells, result.segmentation, row)
    )
    return FileResult(row, cells_path, overlay_path)


#: The one start method of every worker process in her2score's quantifier: a fresh interpreter forked
#: from a clean server, so that no lock held by a thread of the parent (rich's progress refresh,
#: a web server's) is copied half-taken into a worker.
START_METHOD = "forkserver"


#: Modules the fork server imports once when it starts, so that each worker forked from it starts with
#: the scoring code loaded (~0.7 s of imports per worker otherwise, every image of a batch again).
WORKER_PRELOAD = (
    "numpy",
    "pandas",
    "scipy.ndimage",
    "scipy.spatial",
    "skimage.segmentation",
    "skimage.filters",
    "skimage.filters.thresholding",  # skimage loads its submodules lazily, on first use
    "skimage.morphology",
    "pyarrow.pandas_compat",
    "her2score.quantify.morphology",
    "cv2",  # imported by quantify.kernels on first use
    "her2score.quantify.kernels",
    "her2score.quantify.compiled",  # numba: compiled (or loaded from its cache) once, in the server
    "PIL.Image",  # the plain-image reader (a worker that opens the file itself, ~0.03 s each)
    "her2score.slide",
    "her2score.quantify.pipeline",
    "her2score.quantify.tiled",
    "her2score.quantify.nuclear",
)


def worker_pool(workers: int, initializer: Any = None, initargs: tuple = ()) -> Any:
    """A process pool of ``workers`` processes started by :data:`START_METHOD` (from a fork server that
    has imported :data:`WORKER_PRELOAD`; the preload takes effect when the server starts, with the
    first pool of this process)."""
    import concurrent.futures as cf
    import multiprocessing

    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    return cf.ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs)
