"""The quantifier end to end: one in-memory image (:func:`quantify_image`), and one file
(:func:`quantify_file`): a patch or core in one piece, a whole slide tile by tile over the tissue
(streaming, in this process or over worker processes started by ``forkserver``).

Per image: stains separated with H-DAB vectors (per-image Macenko estimate when plausible, else the
defaults; :mod:`her2score.stain.detect`), an H&E image passed by mistake refused
(:class:`~her2score.errors.StainError`), cells segmented (:mod:`~her2score.quantify.cells`),
membranes measured (:mod:`~her2score.quantify.membrane`) and the tumour cells scored
(:mod:`~her2score.quantify.scoring`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import NoTissueError, StainError
from her2score.quantify.cells import CellParams, CellSegmentation, segment_cells
from her2score.quantify.membrane import empty_cells, measure_cells
from her2score.quantify.scoring import ScoreAccumulator
from her2score.quantify.thresholds import Thresholds
from her2score.rules import MEMBRANE_CLASSES
from her2score.stain.deconvolution import StainMatrix, rgb_to_od
from her2score.stain.detect import choose_stain_vectors, looks_like_he, macenko


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
) -> ImageQuantification:
    """Segment and score the cells of one RGB image at ``mpp`` µm/px.

    Raises :class:`NoTissueError` (no tissue), :class:`StainError` (H&E image, or no nuclei).
    """
    from scipy import ndimage as ndi

    from her2score.stain.deconvolution import separate_stains

    t = thresholds or Thresholds()
    p = cell_params or CellParams()
    rgb = np.ascontiguousarray(rgb[..., :3])
    tissue = tissue_mask_for(rgb, mpp) if tissue is None else tissue
    if require_tissue and tissue.sum() * mpp**2 < 500.0:  # less than ~ a 22 µm square: nothing to score
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
    dab = ndi.gaussian_filter(conc[matrix.names[1]], p.dab_smoothing_um / mpp)
    seg = segment_cells(hema, mpp, tissue, p, dab=dab)
    if require_tissue and seg.n_cells == 0:
        raise StainError(
            "no nuclei found in the hematoxylin channel (no counterstain, or blank tissue)", path
        )
    cells = measure_cells(seg, hema, dab, mpp, t)
    acc = ScoreAccumulator()
    acc.add_cells(cells)
    acc.add_tissue(dab, tissue, t)
    return ImageQuantification(cells, seg, tissue, dab, source, acc)


#: Work at ~0.5 µm/px: finer scans are read downsampled (cells stay > 10 px across), coarser ones as
#: they are, down to 1 µm/px; beyond that membranes cannot be resolved.
WORK_MPP = 0.5
FINEST_NATIVE_MPP = 0.4
COARSEST_MPP = 1.0
#: Images up to this many pixels (at the work resolution) are scored in one piece; larger ones tiled.
WHOLE_IMAGE_PIXELS = 4096 * 4096
TILE_SIZE = 1024
#: Tile overlap (px at the work resolution): 64 px = 32 µm, more than a tumour cell, so that every cell
#: lies whole in some tile; a cell belongs to the tile whose core holds its nucleus centre.
TILE_OVERLAP = 64
#: Longest side of a slide's overview overlay (px).
OVERVIEW_MAX_SIZE = 4000


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

    Small images (patches, TMA cores) are scored in one piece; whole slides tile by tile over the
    tissue, streaming (memory stays flat), over ``workers`` processes. ``progress`` is an optional
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
        return _quantify_tiled(slide, path, stem, out_dir, mpp, work, t, p, stains, workers, progress)


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


class TileScorer:
    """Scores tiles of one slide: opens the slide once, reads each tile at the work resolution and keeps
    the cells whose nucleus centre lies in the tile's core. Use as a context manager (closes the slide).
    """

    def __init__(
        self, path: str, mpp: float | None, work: float, t: Thresholds, p: CellParams, matrix: StainMatrix
    ) -> None:
        from her2score.slide import open_slide

        self.slide = open_slide(path, mpp=mpp)
        self.work, self.t, self.p, self.matrix = work, t, p, matrix

    def __enter__(self) -> TileScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.slide.close()

    def score(self, tile: Any, core: tuple[float, float, float, float]) -> tuple[Any, ScoreAccumulator]:
        """Score one tile; keep the cells whose nucleus centre lies in the tile's core (level-0 px)."""
        slide, work, t = self.slide, self.work, self.t
        rgb = slide.read_region((tile.x, tile.y), (tile.size, tile.size), work)
        result = quantify_image(
            rgb, work, t, self.p, stains=self.matrix, path=slide.path, check_stain=False, require_tissue=False
        )
        factor = work / slide.require_mpp()
        cells = _cells_to_level0(result.cells, factor, tile.x, tile.y)
        x0, y0, x1, y1 = core
        keep = (cells["x"] >= x0) & (cells["x"] < x1) & (cells["y"] >= y0) & (cells["y"] < y1)
        cells = cells[keep.to_numpy()].reset_index(drop=True)
        cells["x_um"] = (cells["x"] * slide.require_mpp()).astype(np.float32)
        cells["y_um"] = (cells["y"] * slide.require_mpp()).astype(np.float32)
        acc = ScoreAccumulator()
        acc.add_cells(cells)
        # Tissue DAB statistics over the core only, so that overlaps are not counted twice.
        ys = (np.arange(rgb.shape[0]) * factor + tile.y)[:, None]
        xs = (np.arange(rgb.shape[1]) * factor + tile.x)[None, :]
        in_core = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        acc.add_tissue(result.dab, result.tissue & in_core, t)
        return cells, acc


#: The one start method of every worker process in her2score's quantifier: a fresh interpreter forked
#: from a clean server, so that no lock held by a thread of the parent (rich's progress refresh,
#: a web server's) is copied half-taken into a worker.
START_METHOD = "forkserver"

#: In a pool worker process only: that process's :class:`TileScorer`, set by :func:`_init_pool_worker`.
#: The main process never sets or reads it (it scores in process with its own local scorer), so threads
#: of the main process share no slide.
_POOL_SCORER: TileScorer | None = None


def _init_pool_worker(*args: Any) -> None:
    import multiprocessing

    global _POOL_SCORER
    if multiprocessing.parent_process() is None:
        raise RuntimeError("_init_pool_worker runs only in worker processes")
    _POOL_SCORER = TileScorer(*args)


def _pool_tile_task(tile: Any, core: tuple[float, float, float, float]) -> tuple[Any, ScoreAccumulator]:
    assert _POOL_SCORER is not None, "worker process not initialised"
    return _POOL_SCORER.score(tile, core)


def worker_pool(workers: int, initializer: Any = None, initargs: tuple = ()) -> Any:
    """A process pool of ``workers`` processes started by :data:`START_METHOD`."""
    import concurrent.futures as cf
    import multiprocessing

    return cf.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(START_METHOD),
        initializer=initializer,
        initargs=initargs,
    )


def _score_tiles(
    init_args: tuple, tiles: list[Any], cores: list[tuple[float, float, float, float]], workers: int
) -> Iterator[tuple[Any, ScoreAccumulator]]:
    """Each tile's cells and sums, in tile order, in this process or over ``workers`` processes."""
    import collections

    if workers <= 0:
        with TileScorer(*init_args) as scorer:
            for tile, core in zip(tiles, cores, strict=True):
                yield scorer.score(tile, core)
        return
    # A bounded window of tiles in flight keeps memory flat; results are taken in tile order so that
    # the output does not depend on timing.
    with worker_pool(workers, _init_pool_worker, init_args) as pool:
        window: collections.deque = collections.deque()
        for tile, core in zip(tiles, cores, strict=True):
            window.append(pool.submit(_pool_tile_task, tile, core))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def tile_cores(tiles: list[Any]) -> list[tuple[float, float, float, float]]:
    """Level-0 core ``(x0, y0, x1, y1)`` of each tile: an overlap with a neighbouring tile is split
    half-way; a side without an overlapping neighbour keeps the whole tile up to its edge."""
    origins = {(tile.x, tile.y) for tile in tiles}
    xs = sorted({tile.x for tile in tiles})
    ys = sorted({tile.y for tile in tiles})
    next_x = dict(zip(xs, [*xs[1:], None], strict=True))
    next_y = dict(zip(ys, [*ys[1:], None], strict=True))
    prev_x = dict(zip(xs, [None, *xs[:-1]], strict=True))
    prev_y = dict(zip(ys, [None, *ys[:-1]], strict=True))
    cores = []
    for tile in tiles:
        left, top, right, bottom = tile.x, tile.y, tile.x + tile.w, tile.y + tile.h
        px, nx, py, ny = prev_x[tile.x], next_x[tile.x], prev_y[tile.y], next_y[tile.y]
        if px is not None and px + tile.w > tile.x and (px, tile.y) in origins:
            left = (px + tile.w + tile.x) / 2
        if nx is not None and nx < tile.x + tile.w and (nx, tile.y) in origins:
            right = (tile.x + tile.w + nx) / 2
        if py is not None and py + tile.h > tile.y and (tile.x, py) in origins:
            top = (py + tile.h + tile.y) / 2
        if ny is not None and ny < tile.y + tile.h and (tile.x, ny) in origins:
            bottom = (tile.y + tile.h + ny) / 2
        cores.append((float(left), float(top), float(right), float(bottom)))
    return cores


def _quantify_tiled(
    slide: Any,
    path: Path,
    stem: str,
    out_dir: Path,
    mpp: float | None,
    work: float,
    t: Thresholds,
    p: CellParams,
    stains: str,
    workers: int,
    progress: Any,
) -> FileResult:
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from her2score.io import atomic_path, write_png
    from her2score.quantify.overlay import dot_overlay
    from her2score.slide.tissue import tile_grid

    overview, overview_mpp = slide.read_overview(max_size=OVERVIEW_MAX_SIZE)
    tissue = tissue_mask_for(overview, overview_mpp, mask_mpp=overview_mpp)
    if tissue.sum() * overview_mpp**2 < 500.0:
        raise NoTissueError("no tissue found on the slide", path)
    if looks_like_he(overview, tissue):
        raise StainError("looks like H&E (eosin-pink, no DAB): pass an HER2 IHC slide", path)
    matrix, source = choose_stain_vectors(overview, stains)  # one set for the whole slide: consistent
    tiles = tile_grid(slide, TILE_SIZE, work, overlap=TILE_OVERLAP, min_tissue=0.02)
    if not tiles:
        raise NoTissueError("no tile holds enough tissue", path)
    cores = tile_cores(tiles)
    level0 = slide.require_mpp()
    total = ScoreAccumulator()
    dots_x, dots_y, dots_c = [], [], []
    class_index = {c: i for i, c in enumerate(MEMBRANE_CLASSES)}
    cells_path = out_dir / f"{stem}.cells.parquet"
    task = progress.add_task(f"{path.name}: tiles", total=len(tiles)) if progress is not None else None
    init_args = (str(path), mpp, work, t, p, matrix)
    with atomic_path(cells_path) as tmp:
        writer = None
        next_id = 1

        def consume(cells: Any, acc: ScoreAccumulator) -> None:
            nonlocal writer, next_id
            cells["cell_id"] = np.arange(next_id, next_id + len(cells), dtype=np.int64)
            next_id += len(cells)
            total.merge(acc)
            tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
            dots_x.append((tumour["x"].to_numpy() * level0 / overview_mpp).astype(np.float32))
            dots_y.append((tumour["y"].to_numpy() * level0 / overview_mpp).astype(np.float32))
            dots_c.append(tumour["membrane_class"].astype(str).map(class_index).to_numpy(dtype=np.int8))
            table = pa.Table.from_pandas(cells, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
            if task is not None:
                progress.advance(task)

        try:
            with contextlib.closing(_score_tiles(init_args, tiles, cores, workers)) as results:
                for cells, acc in results:
                    consume(cells, acc)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            empty_cells().to_parquet(tmp, index=False)
    if task is not None:
        progress.remove_task(task)
    row = _row_head(path, slide, work, f"slide ({len(tiles)} tiles)", source) | total.summary(t)
    xs = np.concatenate(dots_x) if dots_x else np.zeros(0, np.float32)
    ys = np.concatenate(dots_y) if dots_y else np.zeros(0, np.float32)
    cs = np.concatenate(dots_c) if dots_c else np.zeros(0, np.int8)
    overlay_path = write_png(
        out_dir / f"{stem}.overlay.png", dot_overlay(overview, xs, ys, cs, row, overview_mpp)
    )
    return FileResult(row, cells_path, overlay_path)
