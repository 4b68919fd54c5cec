"""The one optical-density function, as tissue detection uses it (against the image's own white)."""

from __future__ import annotations

import numpy as np
import pytest

from her2score.stain.deconvolution import BACKGROUND, rgb_to_od


def _formula(rgb: np.ndarray, background) -> np.ndarray:
    od = -np.log10(np.maximum(np.asarray(rgb, np.float32), 1.0) / np.asarray(background, np.float32))
    return np.maximum(od, 0.0)


@pytest.mark.parametrize("background", [BACKGROUND, (243.0, 240.0, 245.0)])
def test_uint8_lookup_equals_the_formula(background) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    od = rgb_to_od(rgb, background=np.asarray(background, np.float32))
    assert od.dtype == np.float32
    assert np.array_equal(od, _formula(rgb, background))
    assert np.array_equal(rgb_to_od(rgb.astype(np.float32), background), _formula(rgb, background))


def test_glass_reads_zero_and_black_is_finite() -> None:
    white = np.array([243.0, 240.0, 245.0], np.float32)
    rgb = np.array([[[243, 240, 245], [255, 255, 255], [0, 0, 0]]], np.uint8)
    od = rgb_to_od(rgb, background=white)
    assert np.all(od[0, :2] == 0)
    assert np.all(np.isfinite(od))
    assert np.all(od[0, 2] > 2)


def test_one_channel_plane_with_a_scalar_background() -> None:
    plane = np.random.default_rng(1).integers(0, 256, (23, 300), dtype=np.uint8)
    od = rgb_to_od(plane, 240.0)
    assert od.shape == plane.shape
    assert np.array_equal(od, _formula(plane, 240.0))
