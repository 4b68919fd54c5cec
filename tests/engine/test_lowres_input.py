"""Low-resolution inputs: tissue cropped and fitted into a white square, cached by content, failures kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_slides import slide_image, write_pyramid_tiff

from her2score.data import lowres
from her2score.data.lowres import LowResParams, cache_key, fit_square, load_or_prepare, prepare_slides
from her2score.errors import ConfigError


def test_fit_square_keeps_aspect_and_pads_white() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    out = fit_square(img, 32)
    assert out.shape == (32, 32, 3)
    assert (out[:8] == 255).all()
    assert (out[-8:] == 255).all()
    assert (out[8:24] == 0).all()


def test_cache_is_used_and_keyed_by_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slide = write_pyramid_tiff(tmp_path / "s.tiff", slide_image("3+", 0, 512), mpp=2.0)
    params = LowResParams(mpp=8.0, size=32)
    first = load_or_prepare(slide, params, tmp_path / "cache")
    assert first.shape == (32, 32, 3)
    assert first.min() < 200
    assert len(list((tmp_path / "cache").glob("*.png"))) == 1

    def no_read(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("slide re-read despite a cache entry")

    monkeypatch.setattr(lowres, "lowres_image", no_read)
    assert np.array_equal(load_or_prepare(slide, params, tmp_path / "cache"), first)
    assert cache_key(slide, params) != cache_key(slide, LowResParams(mpp=12.0, size=32))


def test_broken_and_empty_slides_are_collected_not_raised(tmp_path: Path) -> None:
    good = write_pyramid_tiff(tmp_path / "good.tiff", slide_image("0", 1, 512), mpp=2.0)
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00" + b"\x00" * 100)
    blank = write_pyramid_tiff(tmp_path / "blank.tiff", np.full((512, 512, 3), 243, np.uint8), mpp=2.0)
    images, failures = prepare_slides(
        [good, broken, blank], LowResParams(size=32), tmp_path / "c", quiet=True
    )
    assert list(images) == [0]
    causes = {Path(f.slide).name: f.cause for f in failures}
    assert set(causes) == {"broken.tiff", "blank.tiff"}
    assert "no tissue" in causes["blank.tiff"]


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="µm/px"):
        LowResParams(mpp=0.25)
