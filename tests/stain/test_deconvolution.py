"""Optical-density colour deconvolution: round trips, pure stains, custom and estimated vectors."""

from __future__ import annotations

import numpy as np
import pytest

from her2score.stain import HDAB, HE, StainMatrix, combine_stains, estimate_stain_vectors, separate_stains
from her2score.stain.deconvolution import DAB, HEMATOXYLIN, od_to_rgb, rgb_to_od


def _angle(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def test_od_round_trip() -> None:
    rgb = np.random.default_rng(0).integers(1, 256, (32, 32, 3)).astype(np.uint8)
    assert np.abs(od_to_rgb(rgb_to_od(rgb)).astype(int) - rgb).max() <= 1
    assert rgb_to_od(np.full((2, 2, 3), 255, np.uint8)).max() == 0.0


@pytest.mark.parametrize(("stains", "second"), [("hdab", "dab"), ("he", "eosin")])
def test_concentrations_are_recovered(stains: str, second: str) -> None:
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 0.8, (40, 40)).astype(np.float32)
    other = rng.uniform(0, 0.8, (40, 40)).astype(np.float32)
    rgb = combine_stains({"hematoxylin": h, second: other}, stains)
    conc = separate_stains(rgb, stains)
    assert set(conc) == {"hematoxylin", second, "residual"}
    # 8-bit rounding limits the precision to a few hundredths of an OD unit.
    assert np.abs(conc["hematoxylin"] - h).mean() < 0.02
    assert np.abs(conc[second] - other).mean() < 0.02
    assert np.abs(conc["residual"]).mean() < 0.02


def test_pure_hematoxylin_has_no_dab() -> None:
    h = np.full((8, 8), 0.6, np.float32)
    conc = separate_stains(combine_stains({"hematoxylin": h, "dab": np.zeros_like(h)}, HDAB), HDAB)
    assert conc["hematoxylin"].mean() == pytest.approx(0.6, abs=0.02)
    assert conc["dab"].max() < 0.03


def test_ink_shows_in_the_residual() -> None:
    green_ink = np.full((4, 4, 3), (40, 140, 60), np.uint8)
    brown = combine_stains({"hematoxylin": np.full((4, 4), 0.2), "dab": np.full((4, 4), 0.7)}, HDAB)
    assert np.abs(separate_stains(green_ink, HDAB)["residual"]).mean() > 0.2
    assert np.abs(separate_stains(brown, HDAB)["residual"]).mean() < 0.02


def test_custom_vectors_and_alpha_channel() -> None:
    custom = StainMatrix(("hematoxylin", "dab"), ((0.60, 0.75, 0.28), (0.30, 0.55, 0.78)))
    h = np.full((6, 6), 0.4, np.float32)
    d = np.full((6, 6), 0.3, np.float32)
    rgb = combine_stains({"hematoxylin": h, "dab": d}, custom)
    rgba = np.concatenate([rgb, np.full((6, 6, 1), 255, np.uint8)], axis=-1)
    conc = separate_stains(rgba, custom)
    assert conc["hematoxylin"].mean() == pytest.approx(0.4, abs=0.02)
    assert conc["dab"].mean() == pytest.approx(0.3, abs=0.02)
    assert HE.matrix().shape == (3, 3)
    assert np.allclose(np.linalg.norm(custom.matrix(), axis=1), 1.0)


def test_estimated_vectors_find_a_labs_stains() -> None:
    """Macenko on a mixture made with shifted vectors recovers them, hematoxylin first."""
    rng = np.random.default_rng(2)
    lab_h = (0.55, 0.78, 0.30)
    lab_dab = (0.22, 0.52, 0.82)
    n = 60
    h = rng.uniform(0.0, 1.0, (n, n)) * (rng.random((n, n)) < 0.7)
    d = rng.uniform(0.0, 1.0, (n, n)) * (rng.random((n, n)) < 0.7)
    rgb = combine_stains({"hematoxylin": h, "dab": d}, StainMatrix(("hematoxylin", "dab"), (lab_h, lab_dab)))
    est = estimate_stain_vectors(rgb)
    assert _angle(est.vectors[0], lab_h) < 6
    assert _angle(est.vectors[1], lab_dab) < 6
    assert _angle(lab_h, HEMATOXYLIN) > 4  # the lab's vectors really differ from the defaults
    assert _angle(lab_dab, DAB) > 3


def test_estimate_needs_stained_pixels() -> None:
    with pytest.raises(ValueError):
        estimate_stain_vectors(np.full((20, 20, 3), 250, np.uint8))
