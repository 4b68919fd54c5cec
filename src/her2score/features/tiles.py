"""Tiles over tissue at a chosen µm/px, read in batches by a thread ahead of the encoder.

:func:`read_tiles` streams: a background thread reads ``batch_size`` tiles at a time and hands them over
through a bounded queue (``prefetch`` batches), so the encoder, not the reader, waits least, and memory
holds a few batches, never a whole level of the slide.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from her2score.slide import Slide, Tile, tile_grid

#: Resolutions and sizes tile features are usually made at (any positive value works).
COMMON_MPP = (0.5, 1.0, 2.0)
COMMON_TILE_SIZES = (224, 256)


def tissue_tiles(
    slide: Slide, mpp: float = 1.0, tile_size: int = 224, min_tissue: float = 0.25
) -> list[Tile]:
    """Tiles of ``tile_size`` px at ``mpp`` µm/px with at least ``min_tissue`` of tissue, row by row."""
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    return tile_grid(slide, tile_size, mpp, min_tissue=min_tissue)


_DONE = object()


def read_tiles(
    slide: Slide, tiles: list[Tile], batch_size: int = 32, prefetch: int = 4
) -> Iterator[tuple[np.ndarray, list[Tile]]]:
    """``(uint8 tiles (B, size, size, 3), their Tile records)`` batch by batch, read by a thread.

    An error while reading (a truncated file) is raised here, in the caller's thread; leaving the loop
    early stops the reader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    handoff: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for start in range(0, len(tiles), batch_size):
                chunk = tiles[start : start + batch_size]
                size = chunk[0].size
                out = np.empty((len(chunk), size, size, 3), dtype=np.uint8)
                for i, t in enumerate(chunk):
                    out[i] = slide.read_region((t.x, t.y), (t.size, t.size), mpp=t.mpp)
                if not put((out, chunk)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the caller's thread, which decides
            put(exc)

    thread = threading.Thread(target=reader, name=f"tiles:{slide.path.name}", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
