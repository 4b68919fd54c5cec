"""Stain vectors per image and H&E detection (``her2score.stain.detect``: quantifier and predict)."""

from __future__ import annotations

import numpy as np
import pytest

from her2score.errors import ConfigError
from her2score.stain import HDAB
from her2score.stain.deconvolution import DAB, EOSIN, HEMATOXYLIN, od_to_rgb
from her2score.stain.detect import choose_stain_vectors, looks_like_he


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def draw_sheet(membrane_od: float, eosin: bool = False, size_px: int = 256) -> np.ndarray:
    """Round cells 18 µm apart at 0.5 µm/px: hematoxylin nuclei, DAB membranes, or eosin cytoplasm (H&E)."""
    rng = np.random.default_rng(0)
    yy, xx = (np.mgrid[:size_px, :size_px] + 0.5) * 0.5
    r = np.hypot((yy % 18.0) - 9.0, (xx % 18.0) - 9.0)
    hema = np.where(r <= 4.5, 0.35, 0.04).astype(np.float32)
    dab = np.where(np.abs(r - 7.5) <= 0.7, membrane_od, 0.0).astype(np.float32)
    other = np.where(r < 8.5, 0.5, 0.25).astype(np.float32) if eosin else np.zeros_like(hema)
    od = hema[..., None] * _unit(HEMATOXYLIN) + dab[..., None] * _unit(DAB) + other[..., None] * _unit(EOSIN)
    od += rng.normal(0, 0.01, od.shape).astype(np.float32)
    return od_to_rgb(np.clip(od, 0, None))


@pytest.mark.parametrize(("eosin", "expected"), [(True, True), (False, False)])
def test_looks_like_he_tells_eosin_from_dab(eosin: bool, expected: bool) -> None:
    rgb = draw_sheet(0.0 if eosin else 0.6, eosin=eosin)
    tissue = np.ones(rgb.shape[:2], dtype=bool)
    assert looks_like_he(rgb, tissue) is expected


def test_stain_vectors_default_estimated_or_refused() -> None:
    rgb = draw_sheet(0.6)
    assert choose_stain_vectors(rgb, "default") == (HDAB, "default")
    matrix, source = choose_stain_vectors(rgb, "auto")
    assert source.split()[0] in ("estimated", "default")
    assert matrix.names == ("hematoxylin", "dab")
    with pytest.raises(ConfigError, match="auto"):
        choose_stain_vectors(rgb, "macenko")


def test_a_stain_estimate_far_from_the_references_falls_back_and_says_why() -> None:
    from her2score.stain.deconvolution import StainMatrix
    from her2score.stain.detect import check_stain_estimate

    rgb = draw_sheet(0.6)
    blue_ink = StainMatrix(("hematoxylin", "other"), ((0.65, 0.70, 0.29), (0.9, 0.4, 0.1)))
    why = check_stain_estimate(rgb, blue_ink)
    assert why.startswith("DAB")
    matrix, source = choose_stain_vectors(rgb, "auto", estimate=blue_ink)
    assert matrix == HDAB
    assert source == f"default ({why})"
    assert check_stain_estimate(rgb, None) == "too few stained pixels"


def test_an_unstained_image_keeps_the_reference_vectors() -> None:
    blank = np.full((128, 128, 3), 240, np.uint8)
    matrix, source = choose_stain_vectors(blank, "auto")
    assert matrix == HDAB
    assert source.startswith("default (")
