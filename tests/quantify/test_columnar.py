"""Columnar (glandular) epithelium: elongated nuclei in a palisade are tumour cells, isolated spindles
stay stroma, and a synthetic gland of intensely, completely stained columnar cells reads 3+."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree

from her2score.data.synth import render_ihc_patch
from her2score.errors import ConfigError
from her2score.quantify import Thresholds, quantify_image
from her2score.quantify.membrane import cell_kinds, palisade
from her2score.quantify.thresholds import SYNTHETIC_LAB

MPP = 0.5


def _props(y_um, x_um, long_um, short_um, theta) -> dict[str, np.ndarray]:
    """Nucleus properties as :func:`~her2score.quantify.membrane.nucleus_shapes` gives them (px)."""
    y, x = np.asarray(y_um, float) / MPP, np.asarray(x_um, float) / MPP
    major = np.broadcast_to(np.asarray(long_um, float) / MPP, y.shape).copy()
    minor = np.broadcast_to(np.asarray(short_um, float) / MPP, y.shape).copy()
    return {
        "y": y,
        "x": x,
        "area": np.pi / 4 * major * minor,
        "major": major,
        "minor": minor,
        "orientation": np.broadcast_to(np.asarray(theta, float), y.shape).copy(),
        "hematoxylin": np.full(y.shape, 0.4),
    }


def test_palisading_elongated_nuclei_are_tumour_and_isolated_spindles_stromal() -> None:
    t = Thresholds()
    # A row of 12 columnar nuclei (12 x 4 µm, long axes vertical), 8 µm apart side by side ...
    col_x = np.arange(12) * 8.0
    col = _props(np.full(12, 50.0), col_x, 12.0, 4.0, np.pi / 2)
    # ... a fan of 10 round a small lumen (a rosette: neighbours 36° apart) ...
    a = np.arange(10) * 2 * np.pi / 10
    fan = _props(300 + 11 * np.sin(a), 300 + 11 * np.cos(a), 11.0, 3.8, a)
    # ... fibroblasts lying end to end along a collagen bundle, 25 µm apart, and scattered ones ...
    fib = _props(np.full(8, 200.0), 400 + np.arange(8) * 25.0, 14.0, 3.2, 0.0)
    rng = np.random.default_rng(0)
    scatter = _props(rng.uniform(500, 800, 12), rng.uniform(0, 300, 12), 14.0, 3.2, rng.uniform(0, np.pi, 12))
    # ... and a bundle of thin parallel fibroblasts side by side (aligned stroma): too thin to be columnar.
    thin = _props(np.full(10, 900.0), np.arange(10) * 8.0, 14.0, 2.0, np.pi / 2)
    parts = [col, fan, fib, scatter, thin]
    props = {k: np.concatenate([p[k] for p in parts]) for k in col}
    sizes = np.cumsum([0] + [len(p["y"]) for p in parts])
    kinds = cell_kinds(props, MPP, t, props["y"], props["x"])
    groups = [kinds[sizes[i] : sizes[i + 1]] for i in range(len(parts))]
    assert (groups[0][1:-1] == "tumour").all()  # every inner cell of the palisade (the ends have one side)
    assert (groups[1] == "tumour").all()
    for g in groups[2:]:
        assert (g == "stromal").all()
    # Without the palisade rule the columnar nuclei were spindles (the behaviour this replaces).
    off = cell_kinds(props, MPP, dataclasses.replace(t, palisade_radius_um=0.0), props["y"], props["x"])
    assert (off[: sizes[2]] == "stromal").all()
    assert not palisade(props, MPP, t, np.zeros(len(props["y"]), bool)).any()
    with pytest.raises(ConfigError, match="palisade"):
        Thresholds(palisade_max_angle_deg=120)


def test_the_nuclear_mode_takes_a_palisade_for_epithelium_too() -> None:
    """ER/PR/Ki-67 (``nucleus_kinds``) share the palisade rule: columnar nuclei are scored, thin
    fibroblasts side by side and fibroblasts end to end are not (kind 0 tumour, 2 stromal)."""
    from her2score.quantify.nuclear import NuclearThresholds, nucleus_kinds

    t = Thresholds()
    col = _props(np.full(12, 50.0), np.arange(12) * 8.0, 12.0, 4.0, np.pi / 2)
    fib = _props(np.full(8, 200.0), 400 + np.arange(8) * 25.0, 14.0, 3.2, 0.0)
    thin = _props(np.full(10, 900.0), np.arange(10) * 8.0, 14.0, 2.0, np.pi / 2)
    props = {k: np.concatenate([p[k] for p in (col, fib, thin)]) for k in col}
    kinds = nucleus_kinds(props, MPP, t, NuclearThresholds())
    assert (kinds[1:11] == 0).all()  # the inner columnar nuclei (the ends have a neighbour on one side)
    assert (kinds[12:] == 2).all()
    off = nucleus_kinds(props, MPP, dataclasses.replace(t, palisade_radius_um=0.0), NuclearThresholds())
    assert (off[:12] == 2).all()


def test_a_sheet_of_smooth_muscle_is_not_a_palisade_but_a_stratified_one_is() -> None:
    """Smooth muscle (16-18 x 3.3 µm nuclei, 7.5 µm apart side by side, staggered, 8 rows deep) has
    nuclei in line beyond both tips: only its first and last rows (a free end) may pass as a palisade.
    A two-tier pseudostratified palisade (neighbours staggered by up to a nucleus length) keeps a free
    end on every nucleus and stays epithelium."""
    from her2score.quantify.nuclear import NuclearThresholds, nucleus_kinds

    t = Thresholds()
    rng = np.random.default_rng(1)
    cols, rows = 12, 8
    col = np.repeat(np.arange(cols), rows)
    row = np.tile(np.arange(rows), cols)
    y = row * 24.0 + (col % 2) * 12.0 + rng.uniform(-2, 2, col.size)
    muscle = _props(
        y, col * 7.5 + rng.uniform(-0.7, 0.7, col.size), rng.uniform(16, 18, col.size), 3.3, np.pi / 2
    )
    strat = _props(np.where(np.arange(16) % 2, 8.0, 0.0) + 500, np.arange(16) * 7.0, 12.0, 4.0, np.pi / 2)
    props = {k: np.concatenate([muscle[k], strat[k]]) for k in muscle}
    inner = np.r_[(row > 0) & (row < rows - 1), np.zeros(16, bool)]
    for kinds in (
        cell_kinds(props, MPP, t, props["y"], props["x"]) == "tumour",
        nucleus_kinds(props, MPP, t, NuclearThresholds()) == 0,
    ):
        assert not kinds[inner].any()
        assert kinds[col.size + 1 : -1].all()
    # Without the free-end rule most of the sheet passed as columnar epithelium (the specificity hole).
    off = dataclasses.replace(t, palisade_free_end=0.0)
    assert (cell_kinds(props, MPP, off, props["y"], props["x"])[inner] == "tumour").mean() > 0.5
    with pytest.raises(ConfigError, match="palisade_free_end"):
        Thresholds(palisade_free_end=-1)


@pytest.mark.parametrize("rules", ["breast", "gastric"])
def test_columnar_gland_cells_with_intense_complete_membranes_read_3plus(rules: str) -> None:
    rgb, truth = render_ihc_patch("3+", (384, 384), MPP, seed=0, architecture="glandular")
    t = dataclasses.replace(SYNTHETIC_LAB, her2_rules=rules)
    result = quantify_image(rgb, MPP, t)
    assert result.accumulator.summary(t)["category"] == "3+"
    cells = result.cells
    tumour = truth[truth["is_tumour"]]
    dist, idx = cKDTree(cells[["x", "y"]].to_numpy()).query(tumour[["x", "y"]].to_numpy())
    found = cells.iloc[idx[dist * MPP <= 4]]
    assert len(found) >= 0.9 * len(tumour)
    assert (found["cell_kind"] == "tumour").mean() >= 0.85
    elongated = found[found["nucleus_elongation"] > t.tumour_max_elongation]
    assert len(elongated) >= 10  # the glands' cigar-shaped nuclei are elongated ...
    assert (elongated["cell_kind"] == "tumour").mean() >= 0.8  # ... and tumour cells all the same
    intense = tumour["membrane_class"].to_numpy()[dist * MPP <= 4] == "intense-complete"
    assert (found["membrane_class"].astype(str).to_numpy()[intense] == "intense-complete").mean() >= 0.6


def test_blurred_thin_spindles_are_stromal_by_their_shape_at_half_maximum() -> None:
    """Fibroblast nuclei (10 x 2 µm) end to end in a file 14 µm apart (close enough for the nest and
    cohesion rules), seen through a 1 µm blur: segmented low on their flank they look plump (long /
    short axis under 2.5) and passed as tumour cells; their core at half maximum keeps the spindle."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse

    from her2score.quantify.membrane import add_cores, nucleus_shapes

    hema = np.zeros((60, 400), np.float32)
    for k in range(12):
        rr, cc = ellipse(30, 30 + k * 28, 2, 10, shape=hema.shape)  # radii (px): 1 x 5 µm
        hema[rr, cc] = 0.8
    hema = ndi.gaussian_filter(hema, 2.0)
    labels, n = ndi.label(hema > 0.05)
    assert n == 12
    props = nucleus_shapes(labels, hema)
    t = Thresholds()
    assert (props["major"] / props["minor"] < t.tumour_max_elongation).all()
    assert (cell_kinds(props, MPP, t, props["y"], props["x"])[2:-2] == "tumour").all()  # as before
    add_cores(props, labels, hema, MPP)
    assert (props["core_major"] / props["core_minor"] > t.tumour_max_elongation).all()
    assert (cell_kinds(props, MPP, t, props["y"], props["x"]) == "stromal").all()
