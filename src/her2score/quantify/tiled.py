"""Whole cores and slides, tile by tile over all their tissue, streaming, with heterogeneity by region.

An image larger than a tile at the work resolution (a TMA core of ~5,500 px, a large field, a whole
slide) is scored here; smaller ones in one piece (:mod:`~her2score.quantify.pipeline`,
:mod:`~her2score.quantify.nuclear`). For HER2 (membranes) and the nuclear markers alike:

1. one set of stain vectors for the whole image, from its overview (consistent across tiles), and an
   H&E image refused;
2. tiles of :data:`TILE_SIZE` px at the work µm/px over the tissue, overlapping by
   :data:`TILE_OVERLAP` px (more than a cell) so that every cell lies whole in some tile; a cell is
   kept by the one tile whose *core* holds its nucleus centre (:func:`tile_cores`), so it is counted
   once;
3. tiles scored in this process or over ``workers`` processes (``forkserver``), a bounded window in
   flight and results taken in tile order: memory stays flat and the output does not depend on
   timing; the per-cell table is streamed to parquet;
4. scores aggregated over cells (not averaged over tiles), and per **region**: a grid of squares
   ``region_um`` µm wide (default 500 µm, 0.25 mm², about one 40x high-power field) in slide
   coordinates. Each region with enough tumour cells gets its own category; the result row gives the
   share of the tumour-bearing area (the tissue of those regions) and of the tumour cells per
   category, ``heterogeneous`` when a second category covers at least
   :data:`HETEROGENEITY_MIN_PERCENT` % of that area, and for Ki-67 the hot-spot index (the highest
   regional index over regions with at least :data:`HOTSPOT_MIN_NUCLEI` tumour nuclei).
   ``<stem>.regions.csv`` lists the regions, ``<stem>.regions.png`` maps them over the overview.

Region categories: HER2 the ASCO/CAP category; ER/PR the reporting group (negative / low /
positive); Ki-67 ``low`` (< 5 %), ``intermediate`` (5-29 %), ``high`` (≥ 30 %), the cut-points the
International Ki-67 Working Group (2020) found reproducible.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import NoTissueError, StainError
from her2score.quantify.cells import CellParams
from her2score.quantify.thresholds import Thresholds
from her2score.stain.deconvolution import StainMatrix

#: Tile side (px at the work resolution): 1024 px = 512 µm at 0.5 µm/px.
TILE_SIZE = 1024
#: Tile overlap (px at the work resolution): 64 px = 32 µm, more than a tumour cell, so that every cell
#: lies whole in some tile; a cell belongs to the tile whose core holds its nucleus centre.
TILE_OVERLAP = 64
#: Region side for heterogeneity (µm): 500 µm squares, 0.25 mm², about a 40x high-power field.
REGION_UM = 500.0
#: A second category covering at least this share of the tumour-bearing area makes an image heterogeneous.
HETEROGENEITY_MIN_PERCENT = 10.0
#: Regions counted for the Ki-67 hot spot need this many tumour nuclei.
HOTSPOT_MIN_NUCLEI = 100
#: Longest side of the overview (overlay and region map), px.
OVERVIEW_MAX_SIZE = 4000
#: The overview is never finer than this (µm/px): a dot per cell (~8 µm) reads at 1 µm/px, and a core
#: or field read at its scan resolution would cost more to draw and compress than to score a tenth of it.
OVERVIEW_MIN_MPP = 1.0
#: The region map is drawn at no finer than this (µm/px): a 500 µm region is still 250 px across.
REGION_MAP_MIN_MPP = 2.0
#: Stain vectors and the H&E check are computed on the overview strided down to about this many pixels.
STAIN_SAMPLE_PIXELS = 1024 * 1024
#: Ki-67 region groups and their lower bounds (percent positive tumour nuclei).
KI67_GROUPS = (("low", 0.0), ("intermediate", 5.0), ("high", 30.0))

NOT_SCORABLE = "not scorable"
#: Region colours per category (RGB), by marker; not scorable regions stay uncoloured (grey outline).
REGION_COLOURS: dict[str, dict[str, tuple[int, int, int]]] = {
    "her2": {"0": (40, 110, 255), "1+": (255, 220, 0), "2+": (255, 130, 0), "3+": (220, 0, 0)},
    "er": {"negative": (40, 110, 255), "low": (255, 200, 0), "positive": (200, 0, 0)},
    "ki67": {"low": (40, 170, 60), "intermediate": (255, 160, 0), "high": (210, 0, 0)},
}
REGION_COLOURS["pr"] = REGION_COLOURS["er"]


def region_categories(marker: str) -> tuple[str, ...]:
    """The region categories of ``marker``, weakest first."""
    return tuple(REGION_COLOURS[marker])


def ki67_group(index: float) -> str:
    """``low`` / ``intermediate`` / ``high`` for a Ki-67 index (percent)."""
    name = KI67_GROUPS[0][0]
    for group, lower in KI67_GROUPS:
        if index >= lower:
            name = group
    return name


@dataclass(frozen=True)
class TileJob:
    """What a tile scorer needs (picklable: sent once to each worker process)."""

    path: str
    mpp: float | None  #: the µm/px the caller gave for the file (None: from the file)
    work: float  #: µm/px at which cells are measured
    marker: str
    thresholds: Thresholds
    cell_params: CellParams
    matrix: StainMatrix
    nuclear_thresholds: Any = None
    region_um: float = REGION_UM


def new_accumulator(marker: str) -> Any:
    """An empty running-sum accumulator for ``marker`` (HER2: membranes; else nuclei)."""
    if marker == "her2":
        from her2score.quantify.scoring import ScoreAccumulator

        return ScoreAccumulator()
    from her2score.quantify.nuclear import NuclearAccumulator

    return NuclearAccumulator()


def summarise(marker: str, acc: Any, t: Thresholds) -> dict[str, Any]:
    """The score row of an accumulator (HER2 or nuclear)."""
    return acc.summary(t) if marker == "her2" else acc.summary(marker, t)


def region_category(marker: str, summary: dict[str, Any]) -> str:
    """A region's category from its score row (:data:`NOT_SCORABLE` when it has too few tumour cells)."""
    if not summary.get("scorable"):
        return NOT_SCORABLE
    if marker == "her2":
        return str(summary["category"])
    if marker == "ki67":
        return ki67_group(float(summary["pct_positive"]))
    return str(summary["receptor_status"])


@dataclass
class TileResult:
    """One tile's cells (level-0 px, only those whose centre lies in the tile's core) and sums."""

    cells: Any
    accumulator: Any
    regions: dict[tuple[int, int], Any] = field(default_factory=dict)  #: region -> accumulator
    region_tissue_um2: dict[tuple[int, int], float] = field(default_factory=dict)
    cpu_s: float = 0.0  #: CPU seconds the tile took in the process that scored it


class TileScorer:
    """Scores tiles of one file: opens it once (or takes it open), reads each tile at the work resolution,
    keeps the cells whose nucleus centre lies in the tile's core. Use as a context manager (closes the
    file)."""

    def __init__(self, job: TileJob, slide: Any = None) -> None:
        from her2score.slide import open_slide

        self.job = job
        self._owns_slide = slide is None  # a file it was given stays open for its owner
        self.slide = open_slide(job.path, mpp=job.mpp) if slide is None else slide

    def __enter__(self) -> TileScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_slide:
            self.slide.close()

    def score(self, tile: Any, core: tuple[float, float, float, float]) -> TileResult:
        """Score one tile; ``core`` is its level-0 ``(x0, y0, x1, y1)``."""
        import time

        from her2score.quantify.scoring import cell_columns

        started = time.process_time()
        job, slide = self.job, self.slide
        level0 = slide.require_mpp()
        factor = job.work / level0
        # A tile reaching past the image is read only up to its edge: no time spent on blank padding.
        width = max(1, min(tile.size, math.ceil((slide.width - tile.x) / factor)))
        height = max(1, min(tile.size, math.ceil((slide.height - tile.y) / factor)))
        rgb = slide.read_region((tile.x, tile.y), (width, height), job.work)
        common = {"stains": job.matrix, "path": slide.path, "check_stain": False, "require_tissue": False}
        if job.marker == "her2":
            from her2score.quantify.pipeline import quantify_image

            result = quantify_image(
                rgb, job.work, job.thresholds, job.cell_params, accumulate=False, **common
            )
            cells = result.cells
        else:
            from her2score.quantify.nuclear import quantify_nuclear_image

            result = quantify_nuclear_image(
                rgb, job.work, job.thresholds, job.nuclear_thresholds, job.cell_params, **common
            )
            cells = result.nuclei
        x0, y0, x1, y1 = core
        cx = cells["x"].to_numpy(dtype=np.float64) * factor + tile.x
        cy = cells["y"].to_numpy(dtype=np.float64) * factor + tile.y
        keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        cells = cells[keep].reset_index(drop=True)
        cells["x"] = cx[keep].astype(np.float32)
        cells["y"] = cy[keep].astype(np.float32)
        cells["x_um"] = (cx[keep] * level0).astype(np.float32)
        cells["y_um"] = (cy[keep] * level0).astype(np.float32)
        acc = new_accumulator(job.marker)
        # HER2: the columns the accumulators sum, taken out of the frame once for the tile and its regions.
        columns = cell_columns(cells) if job.marker == "her2" else None
        acc.add_columns(columns) if columns is not None else acc.add_nuclei(cells)
        # Tissue is counted over the core only, so that overlaps are not counted twice.
        ys = np.arange(rgb.shape[0]) * factor + tile.y
        xs = np.arange(rgb.shape[1]) * factor + tile.x
        row_in, col_in = (ys >= y0) & (ys < y1), (xs >= x0) & (xs < x1)
        in_core = result.tissue & row_in[:, None] & col_in[None, :]
        if job.marker == "her2":
            acc.add_tissue(result.dab, in_core, job.thresholds)
        out = TileResult(cells, acc)
        self._regions(out, cells, columns, in_core, ys, xs, level0)
        out.cpu_s = time.process_time() - started
        return out

    def _regions(
        self,
        out: TileResult,
        cells: Any,
        columns: dict[str, Any] | None,
        in_core: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        level0: float,
    ) -> None:
        """Per-region accumulators of the tile's cells (HER2: summed from their ``columns``, see
        :func:`~her2score.quantify.scoring.cell_columns`) and the region tissue area (µm²) of its core."""
        side = self.job.region_um
        ry = np.floor(cells["y_um"].to_numpy() / side).astype(np.int64)
        rx = np.floor(cells["x_um"].to_numpy() / side).astype(np.int64)
        for key in set(zip(ry.tolist(), rx.tolist(), strict=True)):
            rows = (ry == key[0]) & (rx == key[1])
            acc = new_accumulator(self.job.marker)
            if columns is not None:  # HER2: the region's rows of the tile's columns, no frame copy
                acc.add_columns(columns, rows)
            else:
                acc.add_nuclei(cells[rows])
            out.regions[key] = acc
        pixel_um2 = self.job.work**2
        row_region = np.floor(ys * level0 / side).astype(np.int64)
        col_region = np.floor(xs * level0 / side).astype(np.int64)
        r0, c0 = int(row_region.min()), int(col_region.min())
        n_cols = int(col_region.max()) - c0 + 1
        flat = (row_region - r0)[:, None] * n_cols + (col_region - c0)[None, :]
        counts = np.bincount(flat[in_core], minlength=int(flat.max()) + 1)
        for index in np.flatnonzero(counts):
            key = (r0 + int(index) // n_cols, c0 + int(index) % n_cols)
            out.region_tissue_um2[key] = float(counts[index]) * pixel_um2


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


#: In a pool worker process only: that process's :class:`TileScorer` (made by its first tile) and the
#: file its initializer opened (:func:`_init_pool_worker`). The main process never sets or reads them
#: (it scores in process with its own local scorer).
_POOL_SCORER: TileScorer | None = None
_POOL_SLIDE: Any = None
_POOL_SOURCE: tuple[str, float | None] | None = None


def _init_pool_worker(source: tuple[str, float | None] | None, decoded: Any = None) -> None:
    """Worker start: open the file (``(path, mpp)``) once, or take ``decoded``, the main process's own
    open plain image with its pixels (:func:`_decoded_image`: a copy through the pipe costs ~0.04 s
    where decoding a 3,072 px PNG again costs ~0.3 s in each worker); the scoring code is imported by
    then (forkserver preload)."""
    import multiprocessing

    global _POOL_SLIDE, _POOL_SOURCE
    if multiprocessing.parent_process() is None:
        raise RuntimeError("_init_pool_worker runs only in worker processes")
    if decoded is not None:
        _POOL_SLIDE, _POOL_SOURCE = decoded, source
    elif source is not None:
        from her2score.slide import open_slide

        _POOL_SLIDE, _POOL_SOURCE = open_slide(source[0], mpp=source[1]), source


def _decoded_image(slide: Any) -> Any:
    """``slide`` when it is a plain image (PNG, JPEG, ...) already decoded in memory, to be sent to the
    workers as it is; ``None`` otherwise (a pyramidal slide is read tile by tile by each worker)."""
    from her2score.slide.reader import _PlainBackend

    backend = getattr(slide, "_backend", None)
    return slide if isinstance(backend, _PlainBackend) and backend._array is not None else None


def _pool_ready() -> None:
    """A no-op task: submitting one per worker starts the workers before there are tiles to score."""


def _pool_tile_task(job: TileJob, tile: Any, core: tuple[float, float, float, float]) -> TileResult:
    global _POOL_SCORER
    if _POOL_SCORER is None or _POOL_SCORER.job != job:
        _POOL_SCORER = TileScorer(job, _POOL_SLIDE if (job.path, job.mpp) == _POOL_SOURCE else None)
    return _POOL_SCORER.score(tile, core)


def start_tile_pool(path: str | Path, mpp: float | None, workers: int, slide: Any = None) -> Any:
    """A pool of ``workers`` tile-scoring processes for one file, started now (each opens the file, or
    takes the pixels of ``slide``, this process's open copy, when it is a decoded plain image) so that
    their start overlaps the main process's own work; ``None`` for ``workers`` <= 0."""
    import threading

    from her2score.quantify.pipeline import worker_pool

    if workers <= 0:
        return None
    pool = worker_pool(workers, _init_pool_worker, ((str(path), mpp), _decoded_image(slide)))

    def warm() -> None:
        try:
            for _ in range(workers):
                pool.submit(_pool_ready)
        except RuntimeError:  # the pool was shut down first (the image failed before its tiles)
            pass

    # Starting a worker waits for the fork server (its imports, the first time): from a thread, so
    # that this process goes on meanwhile; the pool's own lock orders these with later submissions.
    threading.Thread(target=warm, daemon=True).start()
    return pool


def score_tiles(
    job: TileJob,
    tiles: list[Any],
    cores: list[tuple[float, float, float, float]],
    workers: int,
    pool: Any = None,
    slide: Any = None,
) -> Iterator[TileResult]:
    """Each tile's result, in tile order, in this process (reading the open ``slide`` when given, so a
    plain image is not decoded twice) or over ``workers`` processes (``pool``, from
    :func:`start_tile_pool`, or one started here)."""
    if workers <= 0 or len(tiles) <= 1:
        with TileScorer(job, slide) as scorer:
            for tile, core in zip(tiles, cores, strict=True):
                yield scorer.score(tile, core)
        return
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(start_tile_pool(job.path, job.mpp, workers, slide))
        # A bounded window of tiles in flight keeps memory flat; results are taken in tile order so
        # that the output does not depend on timing.
        window: collections.deque = collections.deque()
        for tile, core in zip(tiles, cores, strict=True):
            window.append(pool.submit(_pool_tile_task, job, tile, core))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class RegionTally:
    """Per-region accumulators and tissue area over a whole image, merged tile by tile."""

    def __init__(self, marker: str, region_um: float) -> None:
        self.marker, self.region_um = marker, region_um
        self.accumulators: dict[tuple[int, int], Any] = {}
        self.tissue_um2: dict[tuple[int, int], float] = collections.defaultdict(float)

    def add(self, part: TileResult) -> None:
        for key, acc in part.regions.items():
            if key in self.accumulators:
                self.accumulators[key].merge(acc)
            else:
                self.accumulators[key] = acc
        for key, area in part.region_tissue_um2.items():
            self.tissue_um2[key] += area

    def frame(self, t: Thresholds) -> Any:
        """One row per region with tissue: position (µm), tissue area, tumour cells, score, category."""
        import pandas as pd

        rows = []
        for key in sorted(set(self.tissue_um2) | set(self.accumulators)):
            acc = self.accumulators.get(key) or new_accumulator(self.marker)
            s = summarise(self.marker, acc, t)
            row = {
                "region_row": key[0],
                "region_col": key[1],
                "x0_um": key[1] * self.region_um,
                "y0_um": key[0] * self.region_um,
                "tissue_mm2": self.tissue_um2.get(key, 0.0) / 1e6,
                "n_tumour": int(s["n_tumour_cells"] if self.marker == "her2" else s["n_nuclei"]),
                "category": region_category(self.marker, s),
            }
            if self.marker == "her2":
                row |= {"h_score": s["h_score"], "her2_index": s["her2_index"]}
            else:
                row |= {"pct_positive": s["pct_positive"], "h_score": s["h_score"]}
            rows.append(row)
        columns = ["region_row", "region_col", "x0_um", "y0_um", "tissue_mm2", "n_tumour", "category"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*columns, "h_score"])


def heterogeneity(regions: Any, marker: str, region_um: float) -> dict[str, Any]:
    """The heterogeneity columns of a result row from the region table (:meth:`RegionTally.frame`).

    ``region_pct_area_<category>``: share of the tumour-bearing area (tissue of the scorable regions);
    ``region_pct_cells_<category>``: share of their tumour cells; ``heterogeneity``: the shares as text,
    largest first; ``heterogeneous``: a second category covers ≥ :data:`HETEROGENEITY_MIN_PERCENT` %.
    """
    cats = region_categories(marker)
    scorable = regions[regions["category"] != NOT_SCORABLE] if len(regions) else regions
    area = scorable.groupby("category")["tissue_mm2"].sum() if len(scorable) else {}
    cells = scorable.groupby("category")["n_tumour"].sum() if len(scorable) else {}
    total_area = float(sum(area.values)) if len(scorable) else 0.0
    total_cells = float(sum(cells.values)) if len(scorable) else 0.0
    row: dict[str, Any] = {
        "region_um": region_um,
        "n_regions": len(regions),
        "n_regions_scorable": len(scorable),
        "tumour_area_mm2": total_area,
    }
    shares = {}
    for c in cats:
        a = 100.0 * float(area.get(c, 0.0)) / total_area if total_area else 0.0
        shares[c] = a
        row[f"region_pct_area_{c}"] = a
        row[f"region_pct_cells_{c}"] = 100.0 * float(cells.get(c, 0)) / total_cells if total_cells else 0.0
    ranked = sorted(((v, c) for c, v in shares.items() if v > 0), reverse=True)
    row["heterogeneity"] = " · ".join(f"{c} {v:.0f}%" for v, c in ranked)
    row["heterogeneous"] = len(ranked) > 1 and ranked[1][0] >= HETEROGENEITY_MIN_PERCENT
    if marker == "ki67":
        rich = scorable[scorable["n_tumour"] >= HOTSPOT_MIN_NUCLEI] if len(scorable) else scorable
        row["ki67_hotspot_index"] = float(rich["pct_positive"].max()) if len(rich) else None
    return row


def region_map(
    overview: np.ndarray,
    overview_mpp: float,
    tissue: np.ndarray,
    regions: Any,
    marker: str,
    summary: dict[str, Any],
) -> np.ndarray:
    """The overview with each region's tissue tinted in its category colour, the grid drawn, and a
    legend strip with each category's share of the tumour-bearing area."""
    from PIL import Image, ImageDraw, ImageFont

    out = np.array(overview[..., :3], dtype=np.float32, copy=True)
    h, w = out.shape[:2]
    side = float(summary.get("region_um", REGION_UM)) / overview_mpp  # region side in overview px
    colours = REGION_COLOURS[marker]
    for r in regions.itertuples(index=False):
        colour = colours.get(r.category)
        if colour is None:
            continue
        y0, x0 = round(r.region_row * side), round(r.region_col * side)
        y1, x1 = min(h, round((r.region_row + 1) * side)), min(w, round((r.region_col + 1) * side))
        if y1 <= y0 or x1 <= x0:
            continue
        block = out[y0:y1, x0:x1]
        mask = tissue[y0:y1, x0:x1]
        block[mask] = 0.55 * block[mask] + 0.45 * np.asarray(colour, dtype=np.float32)
    image = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    scale = max(1, round(w / 1000))
    try:
        font = ImageFont.load_default(size=12 * scale)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for r in regions.itertuples(index=False):
        y0, x0 = round(r.region_row * side), round(r.region_col * side)
        x1, y1 = round((r.region_col + 1) * side), round((r.region_row + 1) * side)
        draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 90), width=max(1, scale))
        if side >= 48 * scale and r.category != NOT_SCORABLE:
            draw.text((x0 + 4 * scale, y0 + 3 * scale), str(r.category), fill="black", font=font)
    line = 18 * scale
    canvas = Image.new("RGB", (w, h + 2 * line + 8 * scale), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y, box = 6 * scale, h + 4 * scale, 12 * scale
    for name, colour in colours.items():
        label = f"{name} {summary.get(f'region_pct_area_{name}', 0.0):.0f}%"
        draw.rectangle([x, y + 2, x + box, y + 2 + box], fill=colour, outline="black")
        draw.text((x + box + 4 * scale, y), label, fill="black", font=font)
        x += box + 14 * scale + int(draw.textlength(label, font=font))
    draw.text(
        (6 * scale, y + line),
        f"{marker.upper().replace('KI67', 'Ki-67')} regions {summary.get('region_um', REGION_UM):.0f} um: "
        f"{summary.get('n_regions_scorable', 0)} scorable of {summary.get('n_regions', 0)}; "
        "share of tumour area",
        fill="black",
        font=font,
    )
    return np.asarray(canvas)


@dataclass
class TiledOutputs:
    """What :func:`quantify_tiled` measured and wrote."""

    row: dict[str, Any]
    cells_path: Path
    overlay_path: Path
    regions_path: Path
    region_map_path: Path


def quantify_tiled(
    slide: Any,
    path: Path,
    stem: str,
    out_dir: Path,
    mpp: float | None,
    work: float,
    marker: str,
    t: Thresholds,
    p: CellParams,
    stains: str,
    workers: int = 0,
    progress: Any = None,
    nuclear_thresholds: Any = None,
    region_um: float = REGION_UM,
) -> TiledOutputs:
    """Score an open image or slide over all its tissue, tile by tile, streaming.

    Writes ``<stem>.cells.parquet`` (one row per cell or nucleus, level-0 px), ``<stem>.overlay.png``
    (a dot per tumour cell over the overview), ``<stem>.regions.csv`` and ``<stem>.regions.png``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from her2score.io import atomic_path, write_csv
    from her2score.quantify.pipeline import MIN_IMAGE_TISSUE_UM2, _row_head, tissue_mask_for
    from her2score.slide.tissue import tile_grid
    from her2score.stain.detect import choose_stain_vectors, looks_like_he

    if not (region_um > 0 and math.isfinite(region_um)):
        raise ValueError(f"region_um must be a positive number (got {region_um!r})")
    with contextlib.ExitStack() as stack:
        # Workers start (import, open the file) while this process reads the overview.
        pool = start_tile_pool(path, mpp, workers, slide)
        if pool is not None:
            stack.enter_context(pool)
        overview, overview_mpp = slide.read_overview(max_size=OVERVIEW_MAX_SIZE)
        tissue = tissue_mask_for(overview, overview_mpp, mask_mpp=max(overview_mpp, 2.0))
        if tissue.sum() * overview_mpp**2 < MIN_IMAGE_TISSUE_UM2:
            raise NoTissueError("no tissue found in the image", path)
        # Stain checks on about a megapixel of the overview: plenty of pixels for the vectors, and a
        # 4,000 px overview of a core would otherwise cost more than scoring a tenth of it.
        step = max(1, math.ceil(math.sqrt(overview.shape[0] * overview.shape[1] / STAIN_SAMPLE_PIXELS)))
        sample, sample_tissue = overview[::step, ::step], tissue[::step, ::step]
        if looks_like_he(sample, sample_tissue):
            raise StainError("looks like H&E (eosin-pink, no DAB): pass an IHC image", path)
        matrix, source = choose_stain_vectors(sample, stains)  # one set for the whole image: consistent
        # The overlay and region map are drawn on a coarser copy (see OVERVIEW_MIN_MPP).
        overview, tissue, overview_mpp = _coarser(overview, tissue, overview_mpp, OVERVIEW_MIN_MPP)
        tiles = tile_grid(slide, TILE_SIZE, work, overlap=TILE_OVERLAP, min_tissue=0.02)
        if not tiles:
            raise NoTissueError("no tile holds enough tissue", path)
        cores = tile_cores(tiles)
        level0 = slide.require_mpp()
        job = TileJob(str(path), mpp, work, marker, t, p, matrix, nuclear_thresholds, region_um)
        total = new_accumulator(marker)
        tally = RegionTally(marker, region_um)
        tiles_cpu_s = 0.0
        dots_x, dots_y, dots_c = [], [], []
        cells_path = out_dir / f"{stem}.cells.parquet"
        task = progress.add_task(f"{path.name}: tiles", total=len(tiles)) if progress is not None else None
        with atomic_path(cells_path) as tmp:
            writer = None
            next_id = 1
            try:
                with contextlib.closing(score_tiles(job, tiles, cores, workers, pool, slide)) as results:
                    for part in results:
                        cells = part.cells
                        cells["cell_id"] = np.arange(next_id, next_id + len(cells), dtype=np.int64)
                        next_id += len(cells)
                        total.merge(part.accumulator)
                        tally.add(part)
                        tiles_cpu_s += part.cpu_s
                        tumour = cells[cells["is_tumour"].to_numpy(dtype=bool)]
                        dots_x.append((tumour["x"].to_numpy() * level0 / overview_mpp).astype(np.float32))
                        dots_y.append((tumour["y"].to_numpy() * level0 / overview_mpp).astype(np.float32))
                        dots_c.append(_dot_classes(tumour, marker))
                        table = pa.Table.from_pandas(cells, preserve_index=False)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table.cast(writer.schema))
                        if task is not None:
                            progress.advance(task)
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                _empty_table(marker).to_parquet(tmp, index=False)
    if task is not None:
        progress.remove_task(task)
    regions = tally.frame(t)
    if marker != "her2":  # each tile reads its own hematoxylin off its non-tumour nuclei where it can
        source += "+nuclear-hematoxylin per tile"
    row = _row_head(path, slide, work, f"tiled ({len(tiles)} tiles)", source) | summarise(marker, total, t)
    row |= heterogeneity(regions, marker, region_um)
    row["tiles_cpu_s"] = tiles_cpu_s  # CPU time of the tiles, whichever processes scored them
    regions_path = write_csv(out_dir / f"{stem}.regions.csv", regions)
    xs = np.concatenate(dots_x) if dots_x else np.zeros(0, np.float32)
    ys = np.concatenate(dots_y) if dots_y else np.zeros(0, np.float32)
    cs = np.concatenate(dots_c) if dots_c else np.zeros(0, np.int8)
    if marker == "her2":
        from her2score.quantify.overlay import dot_overlay as draw
    else:
        from her2score.quantify.overlay import nuclear_dot_overlay as draw
    overlay_path = _write_png_fast(
        out_dir / f"{stem}.overlay.png", draw(overview, xs, ys, cs, row, overview_mpp)
    )
    small, small_tissue, small_mpp = _coarser(overview, tissue, overview_mpp, REGION_MAP_MIN_MPP)
    map_path = _write_png_fast(
        out_dir / f"{stem}.regions.png", region_map(small, small_mpp, small_tissue, regions, marker, row)
    )
    return TiledOutputs(row, cells_path, overlay_path, regions_path, map_path)


def _coarser(
    image: np.ndarray, mask: np.ndarray, mpp: float, min_mpp: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """``image`` (box-averaged) and ``mask`` (strided) reduced by the smallest integer factor that makes
    them no finer than ``min_mpp`` (unchanged when already that coarse), and their µm/px. (An overview
    at 0.55-0.99 µm/px, e.g. a 5,500 px core at 0.4 µm/px capped at 4,000 px, is halved: drawn and
    compressed at its own resolution it cost ~1.2 s, more than a tenth of its scoring.)"""
    from PIL import Image

    k = math.ceil(min_mpp / mpp - 1e-9)
    if k <= 1:
        return image, mask, mpp
    h, w = image.shape[0] // k, image.shape[1] // k
    small = Image.fromarray(np.ascontiguousarray(image[: h * k, : w * k, :3]))
    small = np.asarray(small.resize((w, h), resample=Image.Resampling.BOX))
    return small, mask[: h * k : k, : w * k : k], mpp * k


def _write_png_fast(path: Path, image: np.ndarray) -> Path:
    """Write a large RGB overview PNG atomically with light compression: OpenCV's libpng at zlib level
    1 with run-length matching writes a 1,536 px overlay in ~0.12 s against Pillow's ~0.17 s at level
    1 (~0.5 s at its default level 6), the file ~6 % smaller than Pillow's level 1; the same
    pixels."""
    from her2score.io import atomic_path
    from her2score.quantify.kernels import _cv2

    cv2 = _cv2()
    bgr = cv2.cvtColor(np.ascontiguousarray(image[..., :3], dtype=np.uint8), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, data = cv2.imencode(".png", bgr, params)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return Path(path)


def _dot_classes(tumour: Any, marker: str) -> np.ndarray:
    if marker == "her2":
        import pandas as pd

        from her2score.rules import MEMBRANE_CLASSES

        classes = tumour["membrane_class"]
        categorical = isinstance(classes.dtype, pd.CategoricalDtype)
        if categorical and tuple(classes.cat.categories) == tuple(MEMBRANE_CLASSES):
            return classes.cat.codes.to_numpy(dtype=np.int8)  # the class's index, without strings
        index = {c: i for i, c in enumerate(MEMBRANE_CLASSES)}
        return classes.astype(str).map(index).to_numpy(dtype=np.int8)
    return tumour["intensity"].to_numpy(dtype=np.int8)


def _empty_table(marker: str) -> Any:
    if marker == "her2":
        from her2score.quantify.membrane import empty_cells

        return empty_cells()
    from her2score.quantify.nuclear import empty_nuclei

    return empty_nuclei()
