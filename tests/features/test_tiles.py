"""Tiles lie over tissue, at the asked µm/px, and are streamed by a reader thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from her2score.errors import SlideError
from her2score.features.encoders import StainEncoder, TimmEncoder, make_encoder
from her2score.features.tiles import read_tiles, tissue_tiles
from her2score.optics import rgb_to_od
from her2score.slide import Tile, open_slide


@pytest.mark.parametrize(("mpp", "level0_side"), [(0.5, 32), (1.0, 64), (2.0, 128)])
def test_tiles_cover_tissue_only_at_the_asked_resolution(
    slide_paths: list[Path], mpp: float, level0_side: int
) -> None:
    with open_slide(slide_paths[0]) as slide:
        tiles = tissue_tiles(slide, mpp=mpp, tile_size=64, min_tissue=0.5)
        assert tiles
        assert {(t.w, t.size, t.mpp) for t in tiles} == {(level0_side, 64, mpp)}
        read = [b for b, _ in read_tiles(slide, tiles, batch_size=5)]
    images = np.concatenate(read)
    assert images.shape == (len(tiles), 64, 64, 3)
    assert images.dtype == np.uint8
    tissue = rgb_to_od(images).sum(-1) > 0.15  # the glass around the ellipse reads as ~0 density
    assert tissue.mean(axis=(1, 2)).min() >= 0.25  # the tissue mask is coarse (8 µm/px)
    assert len(tiles) < (512 / level0_side) ** 2 / 2  # most of the slide is glass, left out


def test_tiles_read_by_the_thread_equal_direct_reads(slide_paths: list[Path]) -> None:
    with open_slide(slide_paths[1]) as slide:
        tiles = tissue_tiles(slide, mpp=1.0, tile_size=64)
        batches = list(read_tiles(slide, tiles, batch_size=4, prefetch=1))
        assert [len(c) for _, c in batches][:-1] == [4] * (len(batches) - 1)
        for images, chunk in batches:
            for image, t in zip(images, chunk, strict=True):
                assert np.array_equal(image, slide.read_region((t.x, t.y), (64, 64), mpp=1.0))


class _FailingSlide:
    path = Path("broken.tiff")

    def read_region(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        if location[0] > 0:
            raise SlideError("reading failed", self.path)
        return np.zeros((*size, 3), np.uint8)


def test_a_read_error_reaches_the_caller_and_leaving_early_stops_the_reader() -> None:
    tiles = [Tile(i * 8, 0, 8, 8, 8, 1.0, 1.0) for i in range(3)]
    with pytest.raises(SlideError, match="reading failed"):
        list(read_tiles(_FailingSlide(), tiles, batch_size=1))
    many = [Tile(0, 0, 8, 8, 8, 1.0, 1.0)] * 100
    stream = read_tiles(_FailingSlide(), many, batch_size=1, prefetch=2)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tiles:")]


class _CountingSlide:
    path = Path("counting.tiff")

    def __init__(self) -> None:
        self.reads = 0

    def read_region(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        self.reads += 1
        return np.zeros((*size, 3), np.uint8)


def test_the_reader_stays_a_few_batches_ahead_of_a_slow_encoder() -> None:
    """Memory stays flat on a large slide: the reader never holds more than the bounded queue."""
    slide = _CountingSlide()
    stream = read_tiles(slide, [Tile(0, 0, 8, 8, 8, 1.0, 1.0)] * 1000, batch_size=10, prefetch=2)
    next(stream)
    time.sleep(0.3)  # an encoder busy with the first batch
    assert slide.reads <= 10 * (1 + 2 + 1)  # the batch in hand, the queue, the one being put
    stream.close()


def test_stain_encoder_tells_dab_from_hematoxylin_and_glass() -> None:
    encoder = StainEncoder()
    blue = np.full((2, 32, 32, 3), (150, 160, 210), np.uint8)
    brown = np.full((2, 32, 32, 3), (150, 95, 50), np.uint8)
    glass = np.full((1, 32, 32, 3), 245, np.uint8)
    out = encoder(np.concatenate([blue, brown, glass]))
    assert out.shape == (5, encoder.dim)
    assert out.dtype == np.float32
    assert out[:4, 0].min() == 1.0  # tissue fraction
    assert out[4].max() == 0.0  # glass: no tissue, no statistics
    dab_mean = 1 + 1 + len(encoder.QUANTILES) + len(encoder.EDGES) + 1
    assert out[2, dab_mean] > out[0, dab_mean] + 0.2


def test_timm_encoder_is_seeded_never_downloaded_and_loads_local_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tiles = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    a, b = make_encoder("timm:test_resnet", device="cpu"), TimmEncoder("test_resnet", device="cpu")
    assert a.dim == 96
    assert np.allclose(a(tiles), b(tiles))
    other = TimmEncoder("test_resnet", device="cpu", seed=1)
    assert other.key != a.key
    assert not np.allclose(other(tiles), a(tiles))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in other.net.state_dict().items()}, str(weights))
    loaded = make_encoder("timm:test_resnet", weights=weights, device="cpu")
    assert "weights" in loaded.key
    assert np.allclose(loaded(tiles), other(tiles), atol=1e-5)
