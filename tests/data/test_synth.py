"""Synthetic cohorts: per-cell truth follows ASCO/CAP, slides open by µm/px, manifests, reproducibility."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score.data.synth import (
    HER2_CATEGORIES,
    MEMBRANE_CLASSES,
    PAIR_COLUMNS,
    SLIDE_COLUMNS,
    Case,
    SlideSpec,
    her2_category,
    make_cohort,
    receptor_status,
    render_ihc_patch,
    render_pair,
    write_slide,
)
from her2score.data.synth.cells import draw_membrane_mixture, enforce_her2_category
from her2score.stain import separate_stains

CELL_COLUMNS = {
    "cell_id",
    "x",
    "y",
    "is_tumour",
    "intensity",
    "completeness",
    "membrane_class",
    "nuclear_positive",
}


def _tumour(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["is_tumour"]]


# --------------------------------------------------------------------------- ASCO/CAP truth
def test_her2_category_follows_the_ten_percent_rule():
    assert her2_category(["none"] * 90 + ["faint-incomplete"] * 10) == "0"  # exactly 10%: not more
    assert her2_category(["none"] * 89 + ["faint-incomplete"] * 11) == "1+"
    assert her2_category(["none"] * 80 + ["faint-incomplete"] * 9 + ["moderate-complete"] * 11) == "2+"
    assert her2_category(["none"] * 80 + ["intense-complete"] * 10 + ["faint-complete"] * 10) == "2+"
    assert her2_category(["none"] * 60 + ["intense-complete"] * 11 + ["faint-incomplete"] * 29) == "3+"
    assert her2_category(["none"] * 95 + ["intense-complete"] * 5) == "2+"  # the intense minority (rules)
    assert receptor_status([True] + [False] * 99) == "pos"
    assert receptor_status([True] + [False] * 100) == "neg"


@pytest.mark.parametrize("category", HER2_CATEGORIES)
def test_drawn_mixtures_score_their_category_and_overlap_near_thresholds(category):
    rng = np.random.default_rng(0)
    mixes = np.array([draw_membrane_mixture(category, rng) for _ in range(400)])
    np.testing.assert_allclose(mixes.sum(axis=1), 1.0)
    stained, complete, intense = 1 - mixes[:, 0], mixes[:, 2:].sum(axis=1), mixes[:, 4]
    if category == "0":
        assert stained.max() <= 0.10
        assert stained.max() > 0.07
    elif category == "1+":
        assert stained.min() > 0.10
        assert stained.min() < 0.16
        assert complete.max() <= 0.10
    elif category == "2+":
        assert complete.min() > 0.10
        assert complete.min() < 0.16
        assert intense.max() <= 0.10
        assert intense.max() > 0.03  # some 2+ have a few intense cells
    else:
        assert intense.min() > 0.10
        assert intense.min() < 0.16
        assert (mixes[:, 3] > 0).all()
        assert np.median(mixes[:, 0] + mixes[:, 1]) > 0.01


@pytest.mark.parametrize("category", HER2_CATEGORIES)
def test_enforcing_a_category_changes_few_cells(category):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 5, 57).astype(np.int8)  # a random, unrealistic mix
    fixed = enforce_her2_category(codes, category, rng)
    assert her2_category(fixed) == category
    assert (fixed != codes).sum() < len(codes)


# --------------------------------------------------------------------------- patches
@pytest.mark.parametrize("category", HER2_CATEGORIES)
def test_ihc_patch_cells_score_the_category(category):
    for seed in (0, 1):
        rgb, cells = render_ihc_patch(category, size=(320, 256), seed=seed, site=seed)
        assert rgb.shape == (256, 320, 3)
        assert rgb.dtype == np.uint8
        assert set(cells.columns) >= CELL_COLUMNS
        tumour = _tumour(cells)
        assert len(tumour) >= 10
        assert her2_category(tumour["membrane_class"]) == category
        assert set(cells["membrane_class"].astype(str)) <= set(MEMBRANE_CLASSES)
        assert cells["x"].between(0, 320).all()
        assert cells["y"].between(0, 256).all()
        unstained = tumour["membrane_class"] == "none"
        assert (tumour.loc[unstained, "intensity"] == 0).all()
        assert (tumour.loc[~unstained, "completeness"] > 0).all()
        complete = tumour["membrane_class"].astype(str).str.endswith("-complete")
        assert (tumour.loc[complete, "completeness"] >= 0.9).all()


def test_patch_dab_grows_with_category():
    """Membrane DAB measured on the image (not the truth) rises from 0 to 3+."""
    means = []
    for category in HER2_CATEGORIES:
        dab = [
            separate_stains(render_ihc_patch(category, size=(256, 256), seed=s)[0])["dab"].mean()
            for s in range(3)
        ]
        means.append(float(np.mean(dab)))
    assert means[0] < means[2] < means[3]
    assert means[1] < means[3]


def test_patches_are_reproducible_and_seeds_differ():
    a, ca = render_ihc_patch("2+", size=(128, 128), seed=5, site=1)
    b, cb = render_ihc_patch("2+", size=(128, 128), seed=5, site=1)
    c, _ = render_ihc_patch("2+", size=(128, 128), seed=6, site=1)
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(ca, cb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("marker", "status"), [("er", "pos"), ("pr", "neg"), ("er", "neg")])
def test_er_pr_stain_nuclei_not_membranes(marker, status):
    rgb, cells = render_ihc_patch(status, size=(256, 256), seed=3, marker=marker)
    tumour = _tumour(cells)
    assert receptor_status(tumour["nuclear_positive"]) == status
    assert (cells["membrane_class"] == "none").all()
    dab = separate_stains(rgb)["dab"]
    at = lambda t: dab[t["y"].astype(int).clip(0, 255), t["x"].astype(int).clip(0, 255)]  # noqa: E731
    pos, neg = tumour[tumour["nuclear_positive"]], tumour[~tumour["nuclear_positive"]]
    if status == "pos":
        assert at(pos).mean() > at(neg).mean() + 0.1  # brown nuclei
    else:
        assert dab.mean() < 0.05


def test_pair_is_the_same_tissue_slightly_moved():
    he, ihc, cells = render_pair("3+", size=(256, 256), seed=2)
    assert he.shape == ihc.shape == (256, 256, 3)
    assert {"x_he", "y_he"} <= set(cells.columns)
    shift = np.hypot(cells["x"] - cells["x_he"], cells["y"] - cells["y_he"])
    assert 0 < shift.median() < 15  # consecutive sections: close but not identical
    assert her2_category(_tumour(cells)["membrane_class"]) == "3+"
    h_he = separate_stains(he, "he")["hematoxylin"]
    h_ihc = separate_stains(ihc, "hdab")["hematoxylin"]
    other = separate_stains(render_pair("3+", size=(256, 256), seed=9)[1])["hematoxylin"]
    same = np.corrcoef(_blur(h_he).ravel(), _blur(h_ihc).ravel())[0, 1]
    different = np.corrcoef(_blur(h_he).ravel(), _blur(other).ravel())[0, 1]
    assert same > different + 0.2
    assert separate_stains(he, "hdab")["dab"].mean() < separate_stains(ihc, "hdab")["dab"].mean()


def _blur(a: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(a, 8)


def test_he_morphology_carries_a_trace_of_her2():
    """Higher HER2 means more, larger nuclei on average: more hematoxylin in H&E (overlapping cases)."""
    hema = {}
    for category in ("0", "3+"):
        hema[category] = [
            separate_stains(render_pair(category, size=(192, 192), seed=s)[0], "he")["hematoxylin"].mean()
            for s in range(8)
        ]
    assert np.mean(hema["3+"]) > np.mean(hema["0"])


# --------------------------------------------------------------------------- slides
@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "tiny.tiff"
    write_slide(path, SlideSpec(Case(her2="3+", grade=0.6), site=1, seed=4, size_mm=(1.2, 1.0)))
    return path


def test_slide_opens_with_its_mpp_levels_and_tissue(tiny_slide):
    from her2score.slide import open_slide, tissue_mask

    with open_slide(tiny_slide) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)
        assert (slide.width, slide.height) == (3072, 2048)
        mpps = [lvl.mpp for lvl in slide.levels]
        assert mpps == pytest.approx([0.5 * 4**k for k in range(len(mpps))], rel=1e-3)
        assert len(mpps) >= 2
        assert max(slide.levels[-1].width, slide.levels[-1].height) < 1000
        overview, used = slide.read_overview(mpp=8.0)
        assert used == pytest.approx(8.0)
        assert 0.03 < tissue_mask(overview).mean() < 0.9
        patch = slide.read_region((0, 0), (64, 64), mpp=0.5)
        assert patch.shape == (64, 64, 3)


def test_slide_cells_are_in_level0_pixels_and_score_the_slide(tiny_slide):
    cells = pd.read_parquet(tiny_slide.with_name("tiny.cells.parquet"))
    assert set(cells.columns) >= CELL_COLUMNS
    assert cells["x"].between(0, 3072).all()
    assert cells["y"].between(0, 2048).all()
    assert her2_category(_tumour(cells)["membrane_class"].astype(str)) == "3+"


def test_slide_at_quarter_micron(tmp_path):
    from her2score.slide import open_slide

    path = write_slide(
        tmp_path / "q.tiff", SlideSpec(Case(marker="er", er="pos"), seed=1, size_mm=(0.5, 0.5), mpp=0.25)
    )
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25, rel=1e-3)
        assert [lvl.mpp for lvl in slide.levels] == pytest.approx([0.25, 1.0], rel=1e-3)
    cells = pd.read_parquet(tmp_path / "q.cells.parquet")
    assert receptor_status(_tumour(cells)["nuclear_positive"]) == "pos"


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_slide_cohort_manifest_and_reproducibility(tmp_path):
    kwargs = {"markers": ("her2", "pr"), "size_mm": (1.0, 0.8), "workers": 1}
    manifest = make_cohort(tmp_path / "a", 2, seed=3, **kwargs)
    make_cohort(tmp_path / "b", 2, seed=3, **kwargs)
    frame = pd.read_csv(manifest, dtype=str)
    assert list(frame.columns) == SLIDE_COLUMNS
    assert len(frame) == 4
    assert set(frame["stain"]) == {"her2", "pr"}
    assert frame.groupby("patient")[["her2", "er", "pr", "ish", "site"]].nunique().max().max() == 1
    for row in frame.itertuples():
        assert (manifest.parent / row.slide).is_file()
        assert (row.ish == "pos") if row.her2 == "3+" else True
        assert (row.ish == "neg") if row.her2 in ("0", "1+") else True
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # byte-identical, images included


def test_pair_cohort_bci_layout(tmp_path):
    from her2score.slide import open_slide

    manifest = make_cohort(
        tmp_path, 6, seed=1, kind="pairs", patch_size=128, patches_per_patient=2, workers=2
    )
    frame = pd.read_csv(manifest, dtype=str)
    assert list(frame.columns) == PAIR_COLUMNS
    pattern = re.compile(r"^\d{5}_(train|test)_(0|1\+|2\+|3\+)\.png$")
    for row in frame.itertuples():
        name = Path(row.slide).name
        assert pattern.match(name)
        assert name.split("_")[1] == row.split
        assert name[:-4].split("_")[2] == row.her2
        assert row.slide == f"IHC/{name}"
        assert row.he == f"HE/{name}"
        for rel in (row.slide, row.he):
            with open_slide(tmp_path / rel, mpp=0.5) as img:
                assert (img.width, img.height) == (128, 128)
        assert (tmp_path / "cells" / name.replace(".png", ".parquet")).is_file()
    assert frame.groupby("patient")["split"].nunique().max() == 1  # no patient in both splits


def test_cli_synth_and_bad_options(tmp_path, capsys):
    from her2score.cli.main import main

    with pytest.raises(SystemExit) as ok:
        main(["synth", "--out", str(tmp_path), "--n", "1", "--size-mm", "1x1", "--workers", "0", "--quiet"])
    assert ok.value.code == 0
    assert (tmp_path / "manifest.csv").is_file()
    assert (tmp_path / "slides" / "P0000_her2.tiff").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "x"), "--markers", "her2,ki67"])
    assert exc.value.code == 2
    assert "ki67" in capsys.readouterr().err


def test_patients_statuses_are_correlated_as_in_breast_cancer():
    from her2score.data.synth import draw_patients

    frame = pd.DataFrame([p.__dict__ for p in draw_patients(400, seed=2)])
    assert frame["her2"].value_counts().min() == 100  # balanced categories
    er_pos = frame.groupby("her2")["er"].apply(lambda s: (s == "pos").mean())
    assert er_pos["3+"] < er_pos["0"] - 0.1
    assert (frame.loc[frame["her2"] == "3+", "ish"] == "pos").all()
    assert (frame.loc[frame["her2"].isin(["0", "1+"]), "ish"] == "neg").all()
    assert 0.1 < (frame.loc[frame["her2"] == "2+", "ish"] == "pos").mean() < 0.7
    pr_given_er_neg = (frame.loc[frame["er"] == "neg", "pr"] == "pos").mean()
    assert pr_given_er_neg < 0.2


def test_whole_slide_layouts_carry_artefacts_sometimes():
    from her2score.data.synth.cells import build_layout

    kinds = {"ink": 0, "fold": 0, "focus": 0, "dust": 0}
    for seed in range(12):
        layout = build_layout((1024, 1536), 0.5, Case(her2="1+"), np.random.default_rng(seed))
        for name in ("ink", "fold", "focus"):
            kinds[name] += bool(layout.fields[name].max() > 0.5)
        kinds["dust"] += bool((layout.cells["kind"] == 4).any())
        assert 0.05 < (layout.fields["tissue"] > 0.5).mean() < 0.8
    assert all(0 < count < 12 for count in kinds.values()), kinds


def test_patch_packed_with_tumour_and_a_blush():
    """``tumour_fraction=1.0``: tumour over all of the tissue (no stroma cells); ``blush`` darkens it in
    DAB; the category still holds (bench_quantify_packed.py's fields)."""
    _, drawn = render_ihc_patch("1+", size=(256, 256), seed=2)
    packed, cells = render_ihc_patch("1+", size=(256, 256), seed=2, tumour_fraction=1.0)
    blushed, _ = render_ihc_patch("1+", size=(256, 256), seed=2, tumour_fraction=1.0, blush=0.25)
    assert (drawn["cell_type"] != "tumour").any()
    assert (cells["cell_type"] == "tumour").all()
    assert her2_category(_tumour(cells)["membrane_class"]) == "1+"
    assert blushed.mean() < packed.mean() - 10
