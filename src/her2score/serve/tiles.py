"""Deep-zoom tiles of a slide for the viewer, read through her2score's slide reader by µm/px.

A Deep Zoom Image (DZI) has levels 0..``max_level``; level ``max_level`` is the slide at full
resolution and each level below halves it. Here a DZI level is only an index into resolutions: level
``L`` is read at ``mpp * 2 ** (max_level - L)`` µm/px (:meth:`DeepZoom.level_mpp`), whatever pyramid
the file carries; the reader picks the nearest finer level of the file itself.

Open slides and encoded tiles are kept in small least-recently-used caches (a count of open files, a
byte budget of JPEG tiles), so memory stays bounded however long the server runs. Tiles are read in the
server's thread pool, side by side, of one slide or of several (the reader's backends are thread-safe:
OpenSlide is, the TIFF reader locks its file position, a plain image is decoded once when opened), and
no lock is held while a file is read, so a slow or broken slide holds up only the requests for it. A
slide evicted from the cache is closed when the last read in progress on it ends.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Side of a deep-zoom tile in pixels (no overlap between tiles).
TILE_SIZE = 256
JPEG_QUALITY = 85
#: µm/px assumed for display when a file carries none (plain PNG/JPEG); the score asks for the real one.
DISPLAY_MPP = 1.0


@dataclass(frozen=True)
class DeepZoom:
    """The deep-zoom geometry of a slide of ``width`` x ``height`` level-0 pixels at ``mpp`` µm/px."""

    width: int
    height: int
    mpp: float
    mpp_known: bool
    tile_size: int = TILE_SIZE

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height))))

    def level_mpp(self, level: int) -> float:
        """µm/px at which DZI level ``level`` is read."""
        return self.mpp * 2.0 ** (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        scale = 2 ** (self.max_level - level)
        return max(1, math.ceil(self.width / scale)), max(1, math.ceil(self.height / scale))

    def tile_region(self, level: int, col: int, row: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """``(level-0 top-left, output size)`` of one tile, or None when it lies outside the level."""
        if not 0 <= level <= self.max_level:
            return None
        lw, lh = self.level_size(level)
        x, y = col * self.tile_size, row * self.tile_size
        if col < 0 or row < 0 or x >= lw or y >= lh:
            return None
        scale = 2 ** (self.max_level - level)
        size = (min(self.tile_size, lw - x), min(self.tile_size, lh - y))
        return (x * scale, y * scale), size

    def descriptor(self) -> str:
        """The DZI XML descriptor (what OpenSeadragon and other deep-zoom clients read)."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" Overlap="0" '
            f'TileSize="{self.tile_size}"><Size Width="{self.width}" Height="{self.height}"/></Image>\n'
        )

    def describe(self) -> dict[str, Any]:
        """JSON view: the size, the µm/px and each DZI level's µm/px, downsample and size (µm/px None when
        the file carries none: the levels are then read at a nominal :data:`DISPLAY_MPP`)."""
        return {
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp if self.mpp_known else None,
            "tile_size": self.tile_size,
            "levels": [
                {
                    "level": lv,
                    "mpp": self.level_mpp(lv) if self.mpp_known else None,
                    "downsample": 2 ** (self.max_level - lv),
                    "size": list(self.level_size(lv)),
                }
                for lv in range(self.max_level + 1)
            ],
        }


class _OpenSlide:
    """One open slide and its geometry; closed only when no read is in progress on it."""

    def __init__(self, path: Path) -> None:
        from her2score.slide import open_slide

        slide = open_slide(path)
        known = slide.mpp is not None
        if not known:  # read it anyway, at a nominal scale: only the score needs the true µm/px
            slide.close()
            slide = open_slide(path, mpp=DISPLAY_MPP)
        self.slide = slide
        self.zoom = DeepZoom(slide.width, slide.height, float(slide.mpp), known)
        self._state = threading.Lock()
        self._readers = 0
        self.closed = False
        if slide.format in ("png", "jpeg", "bmp", "gif", "webp"):
            slide.read_region((0, 0), (1, 1), slide.mpp)  # decode a plain image now, not in two threads

    def read(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray | None:
        """``Slide.read_region``, or None when the slide was closed meanwhile."""
        with self._state:
            if self.closed:
                return None
            self._readers += 1
        try:
            return self.slide.read_region(location, size, mpp=mpp)
        finally:
            with self._state:
                self._readers -= 1
                last = self.closed and self._readers == 0
            if last:
                self.slide.close()

    def close(self) -> None:
        """Close now, or when the last read in progress ends (never waits: the slide may be slow)."""
        with self._state:
            self.closed = True
            idle = self._readers == 0
        if idle:
            self.slide.close()


class TileServer:
    """Deep-zoom geometry and JPEG tiles of files, with bounded caches (see the module docstring)."""

    def __init__(self, max_open: int = 8, cache_mb: float = 64.0) -> None:
        self.max_open = max_open
        self.cache_bytes = int(cache_mb * 1024 * 1024)
        self._open: OrderedDict[tuple, _OpenSlide] = OrderedDict()
        self._tiles: OrderedDict[tuple, bytes] = OrderedDict()
        self._tile_bytes = 0
        self._lock = threading.Lock()  # guards the two caches, never held while reading a file
        self._opening: dict[tuple, threading.Lock] = {}

    @staticmethod
    def key(path: Path) -> tuple:
        """A cache key that changes when the file is replaced or rewritten."""
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)

    def _get(self, path: Path) -> tuple[tuple, _OpenSlide]:
        key = self.key(path)
        with self._lock:
            if key in self._open:
                self._open.move_to_end(key)
                return key, self._open[key]
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # two requests for a new slide open it once; other slides are not held up
            with self._lock:
                if key in self._open:
                    return key, self._open[key]
            try:
                entry = _OpenSlide(path)
            finally:
                with self._lock:
                    self._opening.pop(key, None)
            with self._lock:
                self._open[key] = entry
                evicted = []
                while len(self._open) > self.max_open:
                    evicted.append(self._open.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return key, entry

    def zoom(self, path: Path) -> DeepZoom:
        """The deep-zoom geometry of ``path`` (raises :class:`~her2score.errors.SlideError`)."""
        return self._get(path)[1].zoom

    def tile(self, path: Path, level: int, col: int, row: int) -> bytes | None:
        """One JPEG tile, or None when (level, col, row) is outside the slide."""
        key, entry = self._get(path)
        tile_key = (*key, level, col, row)
        with self._lock:
            if tile_key in self._tiles:
                self._tiles.move_to_end(tile_key)
                return self._tiles[tile_key]
        region = entry.zoom.tile_region(level, col, row)
        if region is None:
            return None
        rgb = entry.read(region[0], region[1], entry.zoom.level_mpp(level))
        if rgb is None:  # closed by eviction between lookup and read: open it again
            key, entry = self._get(path)
            rgb = entry.read(region[0], region[1], entry.zoom.level_mpp(level))
        if rgb is None:
            return None
        data = encode_jpeg(rgb)
        with self._lock:
            if tile_key not in self._tiles and len(data) <= self.cache_bytes:
                self._tiles[tile_key] = data
                self._tile_bytes += len(data)
                while self._tile_bytes > self.cache_bytes:
                    self._tile_bytes -= len(self._tiles.popitem(last=False)[1])
        return data

    def cached_bytes(self) -> int:
        """Bytes of tiles held in memory now (never above the budget)."""
        return self._tile_bytes

    def close(self) -> None:
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
            self._tiles.clear()
            self._tile_bytes = 0
        for entry in entries:
            entry.close()


def encode_jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., :3])).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
