"""Per-site stain and scanner variation of the synthetic generator, and the 'foreign' look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from her2score.data.synth import make_cohort
from her2score.data.synth.render import LOOKS, SITE_VARIATION, look_scale, site_style


def _within(value: float, bounds: tuple[float, float], slack: float = 1e-9) -> bool:
    return bounds[0] - slack <= value <= bounds[1] + slack


@pytest.mark.parametrize("variation", list(SITE_VARIATION))
def test_site_draws_stay_in_their_documented_ranges(variation: str) -> None:
    r = SITE_VARIATION[variation]
    for site in range(12):
        style = site_style(site, variation)
        assert _within(style.dab_gain, r["dab_gain"])
        assert _within(style.counterstain_gain, r["counterstain_gain"])
        assert _within(style.gamma, r["gamma"])
        assert all(_within(g, r["white_balance"]) for g in style.white_balance)
        assert _within(style.jpeg_quality, r["jpeg_quality"])
        assert _within(style.blur, r["blur_um"])
        assert site_style(site, variation) == style  # a site always stains and scans alike


def test_wide_sites_differ_more_than_mild_ones() -> None:
    def spread(variation: str, key: str) -> float:
        return float(np.std([getattr(site_style(s, variation), key) for s in range(30)]))

    for key in ("dab_gain", "counterstain_gain", "gamma"):
        assert spread("wide", key) > 1.5 * spread("mild", key)
    dab = np.array([site_style(s, "wide").dab for s in range(30)])
    mild = np.array([site_style(s, "mild").dab for s in range(30)])
    assert dab.std(0).sum() > 1.5 * mild.std(0).sum()  # stain vectors further apart


def test_foreign_look_moves_tone_and_scale() -> None:
    default, foreign = site_style(0), site_style(0, look="foreign")
    assert foreign.background[2] < default.background[2] - 10  # a warmer, darker glass
    assert foreign.blur > 0
    assert look_scale("foreign") != 1.0
    assert look_scale("default") == 1.0
    with pytest.raises(ValueError, match="look"):
        site_style(0, look="nowhere")
    assert set(LOOKS) >= {"default", "foreign"}


def test_cohort_with_foreign_look_renders_in_another_colour(tmp_path: Path) -> None:
    import tifffile

    means = {}
    for look in ("default", "foreign"):
        manifest = make_cohort(
            tmp_path / look,
            n=1,
            seed=5,
            size_mm=(0.5, 0.5),
            mpp=2.0,
            look=look,
            site_variation="wide",
            workers=1,
        )
        slide = manifest.parent / "slides" / "P0000_her2.tiff"
        rgb = tifffile.imread(slide).reshape(-1, 3).astype(float)
        means[look] = rgb.mean(0)
    assert np.abs(means["foreign"] - means["default"]).max() > 5
    with pytest.raises(ValueError, match="site_variation"):
        make_cohort(tmp_path / "bad", n=1, site_variation="extreme")
