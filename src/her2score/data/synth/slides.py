"""Synthetic whole slides written as pyramidal tiled TIFF (JPEG tiles, µm/px in the resolution tags),
which OpenSlide opens as a generic TIFF.

Level 0 is rendered strip by strip (1024 rows) and streamed into the TIFF tile by tile; background
blocks are filled without rendering; each lower level is a 4× box average of the one above, so at the
default 0.5 µm/px the levels are 0.5, 2 and 8 µm/px.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from her2score.data.synth.cells import Case, build_layout, cells_table
from her2score.data.synth.render import background_rgb, look_scale, make_stamps, render_region, site_style
from her2score.io import atomic_path

TILE = 256
BLOCK = 1024
LEVEL_FACTOR = 4
SMALLEST_LEVEL = 1000  # px: stop adding levels once the longer side is below this


@dataclass(frozen=True)
class SlideSpec:
    """One slide to write: the case it shows, where it was stained and scanned, its size."""

    case: Case
    site: int = 0
    seed: int = 0
    size_mm: tuple[float, float] = (3.5, 2.5)  # width, height
    mpp: float = 0.5
    variation: str = "mild"  # how far sites differ (render.SITE_VARIATION): mild or wide
    look: str = "default"  # another renderer's look altogether (render.LOOKS): default or foreign


def _downsample(rgb: np.ndarray, k: int) -> np.ndarray:
    """k× box average (what a scanner's lower pyramid levels are)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).reduce(k))


def write_slide(path: str | Path, spec: SlideSpec, cells_path: str | Path | None = None) -> Path:
    """Render ``spec`` and write it to ``path`` (pyramidal TIFF) and its per-cell truth to Parquet.

    Both files are written atomically. ``cells_path`` defaults to ``<stem>.cells.parquet`` beside the slide.
    """
    import tifffile

    path = Path(path)
    cells_path = Path(cells_path) if cells_path else path.with_name(path.stem + ".cells.parquet")
    rng = np.random.default_rng([int(spec.seed), 0x51DE])
    mpp = float(spec.mpp)
    width = _round_up(spec.size_mm[0] * 1000 / mpp, BLOCK)
    height = _round_up(spec.size_mm[1] * 1000 / mpp, BLOCK)
    drawn_mpp = mpp * look_scale(spec.look)  # a look's cells and tissue are drawn at another scale
    layout = build_layout((height, width), drawn_mpp, spec.case, rng, whole_slide=True, artefacts=True)
    stamps = make_stamps(drawn_mpp, spec.case.grade, rng)
    style = site_style(spec.site, spec.variation, spec.look)
    stain = "ihc"
    background = background_rgb(style)

    f = layout.coarse_factor
    reach = layout.fields["tissue"] + layout.fields["ink"]
    dust_y, dust_x = (layout.cells[k][layout.cells["kind"] == 4] for k in ("y", "x"))
    level1 = np.empty((height // LEVEL_FACTOR, width // LEVEL_FACTOR, 3), dtype=np.uint8)

    def needs_render(y0: int, x0: int) -> bool:
        m = 64 // f + 1
        crop = reach[max(0, y0 // f - m) : (y0 + BLOCK) // f + m, max(0, x0 // f - m) : (x0 + BLOCK) // f + m]
        if crop.size and crop.max() > 0.005:
            return True
        near = (
            (dust_y >= y0 - 16)
            & (dust_y < y0 + BLOCK + 16)
            & (dust_x >= x0 - 16)
            & (dust_x < x0 + BLOCK + 16)
        )
        return bool(near.any())

    def level0_tiles() -> Iterator[np.ndarray]:
        for y0 in range(0, height, BLOCK):
            strip = np.empty((BLOCK, width, 3), dtype=np.uint8)
            strip[:] = background
            for x0 in range(0, width, BLOCK):
                if needs_render(y0, x0):
                    strip[:, x0 : x0 + BLOCK] = render_region(
                        layout, stamps, style, y0, x0, BLOCK, BLOCK, stain
                    )
            k = LEVEL_FACTOR
            level1[y0 // k : (y0 + BLOCK) // k] = _downsample(strip, k)
            for ty in range(0, BLOCK, TILE):
                for tx in range(0, width, TILE):
                    yield strip[ty : ty + TILE, tx : tx + TILE]

    options = {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": style.jpeg_quality},
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
        tif.write(
            level0_tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            resolution=(1e4 / mpp, 1e4 / mpp),
            description=f"her2score synthetic {spec.case.marker.upper()} IHC slide; site {spec.site}",
            subfiletype=0,
            **options,
        )
        level, level_mpp = level1, mpp * LEVEL_FACTOR
        while True:
            tif.write(level, resolution=(1e4 / level_mpp, 1e4 / level_mpp), subfiletype=1, **options)
            if max(level.shape[:2]) < SMALLEST_LEVEL:
                break
            level, level_mpp = _downsample(level, LEVEL_FACTOR), level_mpp * LEVEL_FACTOR

    table = cells_table(layout)
    with atomic_path(cells_path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(np.ceil(value / multiple)) * multiple)
