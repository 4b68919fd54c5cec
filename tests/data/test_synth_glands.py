"""Glandular synthetic tumour (``architecture="glandular"``): tubular glands of columnar cells with the
same per-cell HER2 truth as round cells, plus ring or basolateral membranes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from her2score.data.synth import Case, SlideSpec, her2_category, make_cohort, render_ihc_patch, write_slide
from her2score.data.synth.cells import build_layout


@pytest.mark.parametrize("category", ["0", "1+", "2+", "3+"])
def test_glandular_patch_renders_with_truth_scoring_its_category(category: str) -> None:
    rgb, cells = render_ihc_patch(category, (256, 256), 0.5, seed=3, architecture="glandular")
    assert rgb.shape == (256, 256, 3)
    assert rgb.dtype == np.uint8
    tumour = cells[cells["is_tumour"]]
    assert len(tumour) >= 20
    assert her2_category(tumour["membrane_class"]) == category  # basolateral counted complete (gastric)
    assert set(cells["membrane_pattern"]) <= {"ring", "basolateral"}
    assert cells["x"].between(0, 256).all()
    assert cells["y"].between(0, 256).all()
    again, cells_again = render_ihc_patch(category, (256, 256), 0.5, seed=3, architecture="glandular")
    assert np.array_equal(rgb, again)
    assert cells.equals(cells_again)


def test_columnar_cells_are_tall_with_elongated_radial_nuclei_round_a_lumen() -> None:
    rng = np.random.default_rng(1)
    layout = build_layout((600, 600), 0.5, Case(her2="1+", architecture="glandular"), rng, whole_slide=False)
    glands, c = layout.extras["glands"], layout.cells
    assert len(glands["cy"]) >= 2
    assert (glands["height"] * 0.5 >= 15).all()
    assert (glands["height"] * 0.5 <= 30).all()
    t = c["kind"] == 0
    assert (c["nuc_long"][t] > c["nuc_short"][t]).all()
    assert np.median(c["nuc_long"][t] / c["nuc_short"][t]) > 1.8
    # Nuclei lie within their cell's height from the lumen.
    g = c["gland"][t]
    assert (c["depth"][t] > 0).all()
    assert (c["depth"][t] < 1).all()
    assert (g >= 0).all()
    # Basolateral (U) cells have complete classes and a stained share of their outline below 1.
    # A partial (incomplete) ring covering half the outline or more never leaves exactly the luminal
    # side open (that would be a basolateral U): its gap never holds the whole apical side.
    height = glands["height"][g]
    width = (2 * np.pi * (glands["radius"][g] + height / 2) + 4 * glands["half"][g]) / glands["n_cells"][g]
    apical = width / (2 * height + 2 * width)  # outline positions [0, apical) are the luminal side
    comp = c["completeness"][t]
    gap_from = np.mod(c["arc_start"][t] / (2 * np.pi) + comp, 1.0)
    partial = (c["membrane"][t] == 1) & (comp >= 0.5)
    assert partial.sum() >= 3
    assert not (partial & (np.mod(-gap_from, 1.0) + apical <= 1 - comp)).any()
    u = t & (c["pattern"] == 1)
    assert (c["membrane"][u] >= 2).all()
    assert (c["completeness"][u] < 1).all()


def test_glandular_slide_and_cohort(tmp_path) -> None:
    spec = SlideSpec(Case(her2="2+", architecture="glandular"), seed=2, size_mm=(0.6, 0.6))
    path = write_slide(tmp_path / "g.tiff", spec)
    cells = pd.read_parquet(path.with_name("g.cells.parquet"))
    assert her2_category(cells.loc[cells["is_tumour"], "membrane_class"]) == "2+"
    assert "membrane_pattern" in cells
    with pytest.raises(ValueError, match="architecture"):
        make_cohort(tmp_path / "c", 1, kind="pairs", architecture="glandular")
    with pytest.raises(ValueError, match="architecture"):
        render_ihc_patch("2+", (64, 64), architecture="papillary")


def test_solid_default_has_no_gland_columns() -> None:
    _, cells = render_ihc_patch("2+", (128, 128), 0.5, seed=1)
    assert "membrane_pattern" not in cells
