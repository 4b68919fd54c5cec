"""Membrane classes, ASCO/CAP scoring and the whole quantifier: drawn scenes, synthetic truth, real IHC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score.errors import ConfigError, NoTissueError, StainError
from her2score.quantify import Thresholds, calibrate_thresholds, quantify_image, score_counts
from her2score.quantify.membrane import classify_membrane, in_nest, intensity_level
from her2score.quantify.thresholds import SYNTHETIC_LAB
from her2score.quantify.tiled import tile_cores
from her2score.rules import HER2_CATEGORIES as CATEGORIES
from her2score.rules import MEMBRANE_CLASSES
from her2score.stain.deconvolution import DAB, EOSIN, HEMATOXYLIN, od_to_rgb

REAL = Path(__file__).parents[2] / ".." / "shared" / "data" / "real"
MPP = 0.5


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def draw_ihc(
    membrane_od: float = 0.0,
    arc: float = 1.0,
    blush_od: float = 0.0,
    nucleus_um: float = 4.5,
    nucleus_od: float = 0.35,
    size_um: float = 160.0,
    eosin: bool = False,
    lymphocytes: bool = False,
    seed: int = 0,
    rest_od: float = 0.0,
) -> np.ndarray:
    """RGB image of a sheet of round cells (18 µm apart): membrane DAB OD over ``arc`` of the ring,
    optional uniform cytoplasmic DAB, pale stroma; ``eosin`` draws an H&E-like image instead;
    ``lymphocytes`` makes every other row small dark unstained lymphocytes; ``rest_od`` is the membrane
    DAB over the rest of the ring."""
    rng = np.random.default_rng(seed)
    n = round(size_um / MPP)
    yy, xx = (np.mgrid[:n, :n] + 0.5) * MPP
    hema = np.full((n, n), 0.04, np.float32)
    dab = np.zeros((n, n), np.float32)
    other = np.full((n, n), 0.25 if eosin else 0.0, np.float32)
    for row, cy in enumerate(np.arange(12, size_um - 8, 18.0)):
        for cx in np.arange(12, size_um - 8, 18.0):
            r = np.hypot(yy - cy, xx - cx)
            if lymphocytes and row % 2:
                hema[r <= 2.8] = 0.8
                continue
            angle = (np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi)
            hema[r <= nucleus_um] = nucleus_od
            dab[(r > nucleus_um) & (r < 8.0)] += blush_od
            dab[(np.abs(r - 7.5) <= 0.7) & (angle <= arc)] = membrane_od
            dab[(np.abs(r - 7.5) <= 0.7) & (angle > arc)] = rest_od
            if eosin:
                other[(r > nucleus_um) & (r < 8.0)] = 0.5
    od = hema[..., None] * _unit(HEMATOXYLIN) + dab[..., None] * _unit(DAB)
    od += other[..., None] * _unit(EOSIN)
    od += rng.normal(0, 0.01, od.shape).astype(np.float32)
    return od_to_rgb(np.clip(od, 0, None))


def _tumour_classes(result) -> pd.Series:
    cells = result.cells[result.cells["is_tumour"]]
    return cells["membrane_class"].astype(str).value_counts(normalize=True)


# ---------------------------------------------------------------------------- rules and tables
def test_intensity_levels_follow_thresholds() -> None:
    t = Thresholds(faint=0.1, moderate=0.3, intense=0.6)
    assert intensity_level(np.array([0.0, 0.09, 0.1, 0.29, 0.3, 0.61]), t).tolist() == [0, 0, 1, 1, 2, 3]


def test_membrane_classes() -> None:
    t = Thresholds(complete_fraction=0.75)
    intensity = np.array([0, 1, 1, 2, 3, 3])
    completeness = np.array([1.0, 0.5, 0.8, 0.9, 1.0, 0.4])
    assert classify_membrane(intensity, completeness, t).tolist() == [
        "none",
        "faint-incomplete",
        "faint-complete",
        "moderate-complete",
        "intense-complete",
        "faint-incomplete",  # incomplete staining is the 1+ pattern whatever its intensity
    ]


def _score(**counts: int) -> dict:
    counts = {c: counts.get(c.replace("-", "_"), 0) for c in MEMBRANE_CLASSES}
    n = sum(counts.values())
    levels = [
        counts["none"],
        counts["faint-incomplete"] + counts["faint-complete"],
        counts["moderate-complete"],
    ]
    levels.append(counts["intense-complete"])
    return score_counts(counts, levels, n, n, 0.0, Thresholds())


@pytest.mark.parametrize(
    ("counts", "category", "subtype", "group"),
    [
        ({"none": 89, "intense_complete": 11}, "3+", "", "high"),
        ({"none": 90, "intense_complete": 10}, "2+", "", "low"),  # 10 % is not > 10 %: equivocal
        ({"none": 99.5, "intense_complete": 0.5}, "0", "ultralow", "0"),  # stray cells
        ({"none": 85, "faint_complete": 15}, "2+", "", "low"),
        ({"none": 80, "moderate_complete": 6, "intense_complete": 6, "faint_incomplete": 8}, "2+", "", "low"),
        ({"none": 88, "faint_incomplete": 12}, "1+", "", "low"),
        ({"none": 95, "faint_incomplete": 5}, "0", "ultralow", "0"),
        ({"none": 100}, "0", "null", "0"),
    ],
)
def test_asco_cap_ten_percent_rule(counts: dict, category: str, subtype: str, group: str) -> None:
    row = _score(**counts)
    assert (row["category"], row["her2_0_subtype"], row["her2_3way"]) == (category, subtype, group)


def test_h_score() -> None:
    row = _score(none=50, faint_incomplete=20, moderate_complete=20, intense_complete=10)
    assert row["h_score"] == pytest.approx(20 * 1 + 20 * 2 + 10 * 3)
    assert row["pct_none"] == pytest.approx(50.0)


def test_thresholds_json_round_trip_and_errors(tmp_path: Path) -> None:
    t = Thresholds(faint=0.12, moderate=0.3, intense=0.7)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"thresholds": t.to_dict()}))
    assert Thresholds.from_json(path) == t
    path.write_text(json.dumps({"faint": 0.5, "moderate": 0.3}))
    with pytest.raises(ConfigError, match="faint < moderate"):
        Thresholds.from_json(path)
    path.write_text(json.dumps({"faintt": 0.1}))
    with pytest.raises(ConfigError, match="unknown threshold keys"):
        Thresholds.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"t\.json"):
        Thresholds.from_json(path)


def test_tile_cores_split_overlaps_half_way() -> None:
    from her2score.slide.tissue import Tile

    tiles = [Tile(0, 0, 100, 100, 100, 0.5, 1.0), Tile(80, 0, 100, 100, 100, 0.5, 1.0)]
    tiles.append(Tile(240, 0, 100, 100, 100, 0.5, 1.0))  # a column apart: no shared overlap
    assert tile_cores(tiles) == [(0, 0, 90, 100), (90, 0, 180, 100), (240, 0, 340, 100)]


# ------------------------------------------------------------------------------- drawn scenes
@pytest.mark.parametrize(
    ("membrane_od", "arc", "category", "main_class"),
    [
        (0.0, 1.0, "0", "none"),
        (0.22, 0.45, "1+", "faint-incomplete"),
        (0.45, 1.0, "2+", "moderate-complete"),
        (1.0, 1.0, "3+", "intense-complete"),
    ],
)
def test_drawn_scenes_score_as_drawn(membrane_od: float, arc: float, category: str, main_class: str) -> None:
    result = quantify_image(draw_ihc(membrane_od, arc), MPP, stains="default")
    row = result.accumulator.summary(Thresholds())
    assert row["category"] == category
    assert row["n_tumour_cells"] >= 50
    assert _tumour_classes(result).get(main_class, 0) > 0.8


def test_cytoplasmic_blush_is_not_membrane_staining() -> None:
    """Ring model. Known limitation of the membrane model: this drawn blush, a 3.5 µm brown annulus with
    unstained gaps between cells, is a broad ridge that it reads as a thick membrane (README)."""
    from her2score.quantify import CellParams

    blush = quantify_image(
        draw_ihc(blush_od=0.4), MPP, stains="default", cell_params=CellParams(cell_model="ring")
    )
    assert blush.accumulator.summary(Thresholds())["category"] in ("0", "1+")
    membrane = quantify_image(draw_ihc(membrane_od=0.8, blush_od=0.3), MPP, stains="default")
    assert membrane.accumulator.summary(Thresholds())["category"] == "3+"


def test_an_intense_membrane_is_followed_where_the_cytoplasm_blurs_into_it() -> None:
    """Small cells with an intense membrane over 70 % of the ring and a weaker stretch (0.33 OD) over a
    0.3 OD cytoplasm: the weaker stretch misses the full contrast margin over the cytoplasm (as the
    sectors of small real 3+ cells do, whose cytoplasm lies in the blur of their own membrane), and
    the cells read faint-incomplete without the contrast hysteresis. With it the cell that has shown
    its intense membrane is followed round; a faint partial membrane over a faint blush is not."""
    image = draw_ihc(membrane_od=0.8, arc=0.7, rest_od=0.33, blush_od=0.3)
    off = Thresholds(contrast_continuity=1.0)
    before = quantify_image(image, MPP, stains="default", thresholds=off)
    assert _tumour_classes(before).get("intense-complete", 0) < 0.2
    after = quantify_image(image, MPP, stains="default")
    assert _tumour_classes(after).get("intense-complete", 0) > 0.8
    assert after.accumulator.summary(Thresholds())["category"] == "3+"
    faint = draw_ihc(membrane_od=0.22, arc=0.7, rest_od=0.15, blush_od=0.12)
    for t in (off, Thresholds()):
        result = quantify_image(faint, MPP, stains="default", thresholds=t)
        assert _tumour_classes(result).get("faint-complete", 0) < 0.2
        assert result.accumulator.summary(t)["category"] == "1+"
    with pytest.raises(ConfigError, match="contrast_continuity"):
        Thresholds(contrast_continuity=1.5)


def test_small_dark_nuclei_are_not_tumour_cells() -> None:
    """Rows of lymphocyte-like nuclei (2.8 µm radius, dark) between rows of tumour cells."""
    result = quantify_image(draw_ihc(0.8, lymphocytes=True), MPP, stains="default")
    cells = result.cells
    lymph_rows = ((cells["y"] * MPP - 12) / 18).round().astype(int) % 2 == 1
    assert lymph_rows.sum() >= 30
    assert (~lymph_rows).sum() >= 30
    assert cells.loc[lymph_rows, "is_tumour"].mean() < 0.1
    assert cells.loc[~lymph_rows, "is_tumour"].mean() > 0.9
    assert result.accumulator.summary(Thresholds())["category"] == "3+"


def test_blurred_lymphocytes_are_told_by_their_size_and_darkness_at_half_maximum() -> None:
    """The same rows seen through a 1 µm blur (optics, scan): the lymphocytes (24.6 µm² drawn) segment
    at 41 µm², over the 40 µm² cap, and their mean hematoxylin is diluted by the flank; measured at
    half their own plateau density they are small and dark again (all 30-odd passed as tumour cells
    when judged on the segmented area and mean)."""
    from scipy import ndimage as ndi

    rgb = ndi.gaussian_filter(draw_ihc(0.8, lymphocytes=True).astype(np.float32), (2.0, 2.0, 0))
    result = quantify_image(np.clip(rgb, 0, 255).astype(np.uint8), MPP, stains="default")
    cells = result.cells
    lymph_rows = ((cells["y"] * MPP - 12) / 18).round().astype(int) % 2 == 1
    assert lymph_rows.sum() >= 30
    assert cells.loc[lymph_rows, "nucleus_area_um2"].median() > Thresholds().lymphocyte_max_um2
    assert (cells.loc[lymph_rows, "cell_kind"] == "inflammatory").mean() > 0.9
    assert cells.loc[~lymph_rows, "is_tumour"].mean() > 0.9


def test_isolated_cells_are_not_in_a_nest_but_a_single_file_is() -> None:
    t = Thresholds()
    gy, gx = np.mgrid[0:5, 0:5] * 15.0  # a nest: 25 cells 15 µm apart
    line = np.arange(10) * 15.0  # a single file (lobular), 15 µm apart
    y = np.concatenate([gy.ravel(), np.full(10, 300.0), [150.0, 600.0]])
    x = np.concatenate([gx.ravel(), 200 + line, [400.0, 50.0]])  # ... and two isolated stromal cells
    nest = in_nest(y, x, t)
    assert nest[:25].all()
    assert nest[25 + 2 : 25 + 8].all()  # the file's inner cells; its ends have 2-3 neighbours
    assert not nest[-2:].any()
    assert in_nest(y, x, Thresholds(nest_neighbours=0)).all()


def test_bad_inputs_raise_clear_errors() -> None:
    blank = np.full((256, 256, 3), 245, np.uint8)
    with pytest.raises(NoTissueError, match="no tissue"):
        quantify_image(blank, MPP, path="blank.png")
    with pytest.raises(StainError, match="H&E"):
        quantify_image(draw_ihc(eosin=True), MPP)
    brown = od_to_rgb(np.full((256, 256, 3), 0.4, np.float32) * _unit(DAB))
    brown = np.clip(brown.astype(int) + np.random.default_rng(0).integers(-6, 7, brown.shape), 0, 255)
    with pytest.raises(StainError, match="no nuclei"):
        quantify_image(brown.astype(np.uint8), MPP, stains="default")


def test_calibration_follows_the_control() -> None:
    cells = quantify_image(draw_ihc(1.0), MPP, stains="default").cells
    paler = quantify_image(draw_ihc(0.7), MPP, stains="default").cells
    t_dark, evidence = calibrate_thresholds(cells, "3+")
    t_pale, _ = calibrate_thresholds(paler, "3+")
    assert evidence["n_tumour_cells"] >= 50
    assert t_pale.intense < t_dark.intense
    assert t_dark.faint < t_dark.moderate < t_dark.intense
    # a negative control lifts the faint threshold above its own ring peaks
    negative = quantify_image(draw_ihc(0.2, arc=0.5), MPP, stains="default").cells
    t_neg, _ = calibrate_thresholds(negative, "0")
    assert t_neg.faint > np.percentile(negative.loc[negative.is_tumour, "ring_dab_max"], 90)
    with pytest.raises(ConfigError):
        calibrate_thresholds(cells, "4+")


@pytest.mark.parametrize(("category", "seed"), [("3+", 1002), ("2+", 1002)])
def test_calibration_on_a_control_like_the_defaults_leaves_them(category: str, seed: int) -> None:
    """A textured control that reads its own category at the defaults calibrates to about them: the
    control is measured on the scale that grades intensity (membrane DAB), not on ring peak pixels,
    which run about twice as high on textured membranes and once doubled every threshold."""
    from her2score.data.synth import render_ihc_patch

    rgb, _ = render_ihc_patch(category, (512, 512), MPP, seed=seed, site=seed % 4)
    result = quantify_image(rgb, MPP, SYNTHETIC_LAB)
    assert result.accumulator.summary(SYNTHETIC_LAB)["category"] == category
    _, evidence = calibrate_thresholds(result.cells, category, SYNTHETIC_LAB)
    assert 0.67 < evidence["factor"] < 1.5, evidence


def test_calibration_of_a_sparsely_stained_control_reads_its_ring_peaks() -> None:
    """Under 10 % stained, the ring peaks of all cells, put on the membrane scale by the stained
    cells, give the scale: about what the fully stained control gives."""
    cells = quantify_image(draw_ihc(0.3), MPP, stains="default").cells
    _, full = calibrate_thresholds(cells, "1+")
    sparse = cells.copy()
    stained = np.flatnonzero(sparse["is_tumour"] & (sparse["membrane_class"] != "none"))
    assert len(stained) > 20
    hidden = sparse.index[stained[5:]]  # keep five stained cells (< 10 %), as if the rest fell under faint
    sparse.loc[hidden, "membrane_class"] = "none"
    sparse.loc[hidden, "membrane_dab"] = 0.0
    _, evidence = calibrate_thresholds(sparse, "1+")
    assert "ring_peak_scale" in evidence
    assert "ring_peak_scale" not in full
    assert evidence["factor"] == pytest.approx(full["factor"], rel=0.2)


def test_calibration_refuses_a_positive_control_without_staining() -> None:
    cells = quantify_image(draw_ihc(0.0), MPP, stains="default").cells
    with pytest.raises(StainError, match="too few to calibrate"):
        calibrate_thresholds(cells, "1+")
    unchanged, evidence = calibrate_thresholds(cells, "0")  # an unstained 0 control agrees as it is
    assert unchanged == Thresholds()
    assert evidence["factor"] == 1.0


def test_label_quantile_per_cell() -> None:
    from her2score.quantify.membrane import label_quantile

    ids = np.array([0, 0, 0, 0, 2, 2, 0])
    values = np.array([0.4, 0.1, 0.3, 0.2, 0.9, 0.5, 0.0])
    assert label_quantile(ids, values, 3, 0.25).tolist() == [0.1, 0.0, 0.5]
    assert label_quantile(ids, values, 3, 1.0).tolist() == [0.4, 0.0, 0.9]


# ---------------------------------------------------------------------------- synthetic truth
@pytest.mark.parametrize("category", CATEGORIES)
def test_synthetic_truth_keeps_a_margin_at_every_ten_percent_cut(category: str) -> None:
    """The fractions that decide a case's category sit ≥ 3 points from the 10 % cut (both sides)."""
    pytest.importorskip("her2score.data.synth")
    from her2score.data.synth.cells import enforce_her2_category

    rng = np.random.default_rng(3)
    for n in (40, 150, 1000):
        codes = enforce_her2_category(rng.integers(0, 5, n).astype(np.int8), category, rng)
        stained, complete, intense = (codes >= 1).mean(), (codes >= 2).mean(), (codes == 4).mean()
        deciding = {
            "0": [stained <= 0.07],
            "1+": [stained >= 0.13, complete <= 0.07],
            "2+": [complete >= 0.13, intense <= 0.07],
            "3+": [intense >= 0.13],
        }[category]
        assert all(deciding), (n, stained, complete, intense)


def _match(found: pd.DataFrame, truth: pd.DataFrame, max_um: float = 4.0) -> pd.DataFrame:
    from scipy.spatial import cKDTree

    truth = truth[truth["is_tumour"]]
    dist, idx = cKDTree(found[["x", "y"]].to_numpy()).query(truth[["x", "y"]].to_numpy())
    ok = dist * MPP <= max_um
    return pd.DataFrame(
        {
            "truth": truth["membrane_class"].to_numpy()[ok],
            "found": found["membrane_class"].astype(str).to_numpy()[idx[ok]],
        }
    )


@pytest.mark.slow
def test_synthetic_patches_reproduce_category_and_cell_classes() -> None:
    pytest.importorskip("her2score.data.synth")
    from her2score.data.synth import render_ihc_patch

    rows, pairs = [], []
    for category in ("0", "1+", "2+", "3+"):
        for seed in range(4):
            rgb, truth = render_ihc_patch(category, (512, 512), MPP, seed=seed, site=seed % 4)
            result = quantify_image(rgb, MPP, SYNTHETIC_LAB)
            rows.append((category, result.accumulator.summary(SYNTHETIC_LAB)["category"]))
            pairs.append(_match(result.cells, truth))
    scores = pd.DataFrame(rows, columns=["truth", "found"])
    cells = pd.concat(pairs)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 10)
    print("\ncategory confusion\n", pd.crosstab(scores.truth, scores.found))
    print("cell membrane-class confusion\n", pd.crosstab(cells.truth, cells.found))
    category_agreement = (scores.truth == scores.found).mean()
    cell_agreement = (cells.truth == cells.found).mean()
    print(f"category agreement {category_agreement:.2f}, cell agreement {cell_agreement:.2f} ({len(cells)})")
    assert len(cells) > 500
    assert category_agreement >= CATEGORY_AGREEMENT_FLOOR
    steps = scores.truth.map(CATEGORIES.index) - scores.found.map(CATEGORIES.index)
    assert steps.abs().max() <= 1  # misses are one step, at the 10 % cuts
    assert cell_agreement > 0.65  # 0.72 today (16 patches)


#: The issue's bar (≥ 90 % of cases with the true category): these 16 patches read 15/16 today; the
#: generator keeps every deciding fraction ≥ 3 points from a 10 % cut.
CATEGORY_AGREEMENT_FLOOR = 0.9


@pytest.mark.slow
def test_synthetic_slides_reproduce_category(tmp_path: Path) -> None:
    """Small synthetic whole slides (pyramidal TIFFs) scored through ``quantify_file``."""
    pytest.importorskip("her2score.data.synth")
    from her2score.data.synth import make_cohort
    from her2score.quantify import quantify_file

    manifest = make_cohort(tmp_path / "cohort", 8, seed=0, kind="slides", size_mm=(1.5, 1.0), workers=0)
    frame = pd.read_csv(manifest)
    found = [
        quantify_file(manifest.parent / rel, tmp_path / "out", thresholds=SYNTHETIC_LAB).row["category"]
        for rel in frame["slide"]
    ]
    scores = pd.DataFrame({"truth": frame["her2"].astype(str), "found": found})
    print("\nslide category confusion\n", pd.crosstab(scores.truth, scores.found))
    assert scores.truth.nunique() == 4
    assert (scores.truth == scores.found).mean() >= SLIDE_AGREEMENT_FLOOR
    steps = scores.truth.map(CATEGORIES.index) - scores.found.map(CATEGORIES.index)
    assert steps.abs().max() <= 1


#: NOT the issue's 0.9: 8 slides cannot show 90 % (7/8 is 87.5 %), and these read 7/8 (a 1+ read 2+:
#: incomplete faint rings read complete). The 90 % figure is measured over sixteen cohorts of 24 small
#: slides (``benchmarks/bench_quantify.py --seed 1,7,...,59``; README): 354/384 (92.2 %), 94/96 on the
#: four drawn after the last change. 0.85 leaves room for one miss in 8.
SLIDE_AGREEMENT_FLOOR = 0.85


# ------------------------------------------------------------------------------------ real IHC
@pytest.mark.realdata
@pytest.mark.slow
def test_real_bci_ihc_runs_and_ranks_3plus_above_0_and_1plus() -> None:
    folder = REAL / "bci-her2-pairs" / "IHC"
    if not folder.is_dir():
        pytest.skip("../shared/data/real is absent")
    from her2score.slide import load_rgb

    index = {}
    for path in sorted(folder.glob("*.png")):
        result = quantify_image(load_rgb(path), MPP, path=path)
        row = result.accumulator.summary(Thresholds())
        assert row["n_cells"] > 0
        assert 0 <= row["h_score"] <= 300
        index[path.stem.rsplit("_", 1)[1]] = [*index.get(path.stem.rsplit("_", 1)[1], []), row["her2_index"]]
    assert sum(len(v) for v in index.values()) == 13
    high = np.mean(index["3+"])
    low = np.mean(index["0"] + index["1+"])
    print(f"\nmean HER2 index: 3+ {high:.1f}, 0/1+ {low:.1f}")
    assert high > low


@pytest.mark.realdata
@pytest.mark.slow
def test_real_bci_controls_that_read_their_level_calibrate_near_the_defaults() -> None:
    """Calibrating on a real patch that already reads its own level must not move the thresholds
    far (ring-peak calibration doubled them on the clearest 3+ and on a 2+ patch)."""
    folder = REAL / "bci-her2-pairs" / "IHC"
    if not folder.is_dir():
        pytest.skip("../shared/data/real is absent")
    from her2score.slide import load_rgb

    factors = {}
    # (00249, a 2+ slide's patch of intensely stained ducts, reads 3+ since the contrast hysteresis)
    for name in ("00057_test_3+", "00361_test_2+", "00640_test_1+", "00003_train_1+"):
        path = folder / f"{name}.png"
        result = quantify_image(load_rgb(path), MPP, path=path)
        level = name.rsplit("_", 1)[1]
        assert result.accumulator.summary(Thresholds())["category"] == level, name
        factors[name] = calibrate_thresholds(result.cells, level)[1]["factor"]
    print("\ncalibration factors:", {k: round(v, 2) for k, v in factors.items()})
    assert all(0.67 < f < 1.5 for f in factors.values()), factors


@pytest.mark.realdata
@pytest.mark.slow
def test_real_gland_lumina_are_not_filled_into_giant_nuclei() -> None:
    """Real BCI 00249 (ducts/glands with intensely stained columnar cells) and 00361: a lumen ringed by
    touching nuclei was filled into one "nucleus" of 1,340 / 1,384 µm² (the whole gland: its cells were
    lost to the size filter). Checked by eye on the overlays: the glands' cells are now found."""
    folder = REAL / "bci-her2-pairs" / "IHC"
    if not folder.is_dir():
        pytest.skip("../shared/data/real is absent")
    from her2score.slide import load_rgb

    for name in ("00249_test_2+", "00361_test_2+"):
        result = quantify_image(load_rgb(folder / f"{name}.png"), MPP)
        areas = np.bincount(result.segmentation.nuclei.ravel())[1:] * MPP**2
        assert areas.max() < 600.0, (name, areas.max())


@pytest.mark.realdata
@pytest.mark.slow
def test_real_intensely_stained_gland_cells_read_complete() -> None:
    """Real BCI 00249: the ducts' columnar cells are stained intensely all round (membrane and
    cytoplasm; checked by eye on the overlays), but read faint-incomplete where their weaker sectors
    missed the contrast over a cytoplasm lying in their membrane's blur. With the contrast hysteresis
    most of them read complete; the faint 1+ patches (00003, 00640) stay 1+."""
    folder = REAL / "bci-her2-pairs" / "IHC"
    if not folder.is_dir():
        pytest.skip("../shared/data/real is absent")
    from her2score.slide import load_rgb

    rgb = load_rgb(folder / "00249_test_2+.png")
    shares = []
    for t in (Thresholds(contrast_continuity=1.0), Thresholds()):
        cells = quantify_image(rgb, MPP, thresholds=t).cells
        strong = cells[cells["is_tumour"] & (cells["ring_dab_max"] >= 0.45)]
        assert len(strong) >= 100
        shares.append(strong["membrane_class"].astype(str).str.endswith("-complete").mean())
    assert shares[0] < 0.45, shares
    assert shares[1] > 0.5, shares
    for name in ("00003_train_1+", "00640_test_1+"):
        row = quantify_image(load_rgb(folder / f"{name}.png"), MPP).accumulator.summary(Thresholds())
        assert row["category"] == "1+", name


#: What the real BCI patches show by eye (README, "The quantifier on real tissue"): the clearest 3+
#: (complete dark chicken-wire membranes over most tumour nests), a 3+ nest at the edge of a stromal
#: patch, the 2+ (moderate complete membranes with a blush), a faint 1+ tumour, the HER2-0 slide's
#: patch (faint stroma, a duct), and stroma or fat without tumour (too few tumour cells, or 0/1+: cellular
#: stroma with a tan tint still passes the tumour filter, README "Stroma read 1+").
REAL_BY_EYE = {
    "00052_test_3+": ("3+",),
    "00057_test_3+": ("3+",),
    "00361_test_2+": ("2+",),
    "00003_train_1+": ("1+",),
    "00118_test_0": ("0", "1+"),
    "00011_test_3+": ("not scorable", "0", "1+"),
    "00001_train_3+": ("not scorable", "0", "1+"),
    "00002_train_3+": ("not scorable", "0", "1+"),
}


@pytest.mark.slow
def test_real_bci_patches_read_what_is_seen_by_eye() -> None:
    folder = REAL / "bci-her2-pairs" / "IHC"
    if not folder.is_dir():
        pytest.skip("../shared/data/real is absent")
    from her2score.slide import load_rgb

    index = {}
    for name, expected in REAL_BY_EYE.items():
        path = folder / f"{name}.png"
        row = quantify_image(load_rgb(path), MPP, path=path).accumulator.summary(Thresholds())
        assert row["category"] in expected, (name, row["category"])
        assert (
            sum(row[f"n_cells_{k}"] for k in ("tumour", "stromal", "inflammatory", "endothelial", "other"))
            == row["n_cells"]
        )
        index[name] = row["her2_index"]
    # the continuous index ranks the stained patches above the faint and unstained ones
    assert min(index["00052_test_3+"], index["00057_test_3+"], index["00361_test_2+"]) > 2 * max(
        index["00003_train_1+"], index["00118_test_0"], index["00001_train_3+"], index["00002_train_3+"]
    )
    # ... and above the image's own background: the tan tint of a dim scan of stroma (00002, DAB floor
    # 0.17 OD) does not outrank the faint membranes of a 1+ tumour (the raw index read 6.8 vs 6.3)
    assert index["00002_train_3+"] < index["00003_train_1+"]


# ------------------------------------------------------------------------ shared membranes
def draw_rows(stained_rows: tuple[int, ...] = (0, 2, 4, 6), membrane_od: float = 0.6) -> np.ndarray:
    """Packed cells (14 µm apart, membranes touching their neighbours'); rows in ``stained_rows``
    carry a complete stained membrane, the others none."""
    n = round(112 / MPP)
    yy, xx = (np.mgrid[:n, :n] + 0.5) * MPP
    hema = np.full((n, n), 0.04, np.float32)
    dab = np.zeros((n, n), np.float32)
    for row, cy in enumerate(np.arange(7, 112, 14.0)):
        for cx in np.arange(7, 112, 14.0):
            r = np.hypot(yy - cy, xx - cx)
            hema[r <= 4.0] = 0.35
            if row in stained_rows:
                dab = np.maximum(dab, membrane_od * np.exp(-0.5 * ((r - 6.8) / 0.6) ** 2))
    od = hema[..., None] * _unit(HEMATOXYLIN) + dab[..., None] * _unit(DAB)
    od += np.random.default_rng(0).normal(0, 0.01, od.shape).astype(np.float32)
    return od_to_rgb(np.clip(od, 0, None))


def test_unstained_cells_between_stained_rows_stay_unstained() -> None:
    """A stained membrane touching an unstained cell is its neighbour's: judged on its own side
    (the sectors that face no stained cell), the unstained cell reads ``none``."""
    rgb = draw_rows()
    row_of = lambda cells: ((cells["y"] * MPP - 7) / 14).round().astype(int)  # noqa: E731
    shares = {}
    for own_side in (0.15, 1.0):  # 1.0: never judged on its own side (ownership off)
        cells = quantify_image(rgb, MPP, Thresholds(own_side_fraction=own_side), stains="default").cells
        inner = cells[(cells["x"] * MPP > 10) & (cells["x"] * MPP < 102)]
        unstained = inner[row_of(inner).isin([1, 3, 5])]
        stained = inner[row_of(inner).isin([2, 4])]
        assert len(unstained) >= 15
        assert len(stained) >= 10
        complete = stained["membrane_class"].astype(str).str.endswith("-complete")
        assert complete.mean() > 0.8  # the stained rows keep their complete rings either way
        shares[own_side] = (unstained["membrane_class"].astype(str) == "none").mean()
    assert shares[0.15] > 0.8
    assert shares[0.15] > shares[1.0] + 0.3


def test_own_membrane_explains_away_a_neighbours_membrane() -> None:
    from her2score.quantify.membrane import own_membrane

    s = 8
    present = np.ones((2, s), bool)
    stained = np.zeros((2, s), bool)
    stained[0] = True  # cell 0: stained all round
    stained[1, :2] = True  # cell 1: stained only where it touches cell 0
    # (cell, sector, neighbour, neighbour's sector): they meet at sectors 6-7 of 0 and 0-1 of 1
    contacts = np.array([[0, 6, 1, 1], [0, 7, 1, 0], [1, 0, 0, 7], [1, 1, 0, 6]])
    peaks = np.where(stained, 0.5, 0.0).astype(np.float32)
    completeness, membrane, gap = own_membrane(stained, present, peaks, contacts, Thresholds())
    assert completeness.tolist() == [1.0, 0.0]
    assert membrane.tolist() == [0.5, 0.0]
    # cell 1 is judged on its free sectors 3-6 (2 and 7 flank the contact): all unstained
    assert gap.tolist() == [0.0, 4 / 8]


def test_a_darker_neighbours_line_leaves_a_cells_intensity() -> None:
    from her2score.quantify.membrane import own_membrane

    s = 8
    present = np.ones((2, s), bool)
    stained = np.ones((2, s), bool)  # both rings complete: no side is explained away for completeness
    peaks = np.full((2, s), 0.9, np.float32)  # cell 0: intense all round
    peaks[1, 4:] = 0.25  # cell 1: faint on its own side, the intense line where it meets cell 0
    contacts = np.array([[0, 7 - k, 1, k] for k in range(4)] + [[1, k, 0, 7 - k] for k in range(4)])
    completeness, membrane, _ = own_membrane(stained, present, peaks, contacts, Thresholds())
    assert completeness.tolist() == [1.0, 1.0]
    assert membrane.tolist() == pytest.approx([0.9, 0.25])
    _, membrane_off, _ = own_membrane(stained, present, peaks, contacts, Thresholds(darker_neighbour_ratio=0))
    assert membrane_off[1] == pytest.approx(0.575)  # the shared line pulls the median up when the rule is off


def test_longest_gap_runs_round_the_ring() -> None:
    from her2score.quantify.membrane import longest_gap

    gap = np.zeros((4, 8), bool)
    gap[1, [0, 1, 6, 7]] = True  # one run of 4 through sector 0
    gap[2, [1, 3, 5]] = True  # three runs of 1
    gap[3] = True
    assert longest_gap(gap).tolist() == [0, 4, 1, 8]


def test_a_ring_broken_by_one_long_gap_is_incomplete() -> None:
    t = Thresholds(complete_fraction=0.8, max_gap_fraction=0.1)
    intensity = np.array([3, 3, 3], np.int8)
    completeness = np.array([0.85, 0.85, 0.85])
    gap = np.array([0.03, 0.15, 0.15])  # scattered dropouts vs one 54° break
    assert classify_membrane(intensity, completeness, t, gap).tolist()[:2] == [
        "intense-complete",
        "faint-incomplete",
    ]
    off = Thresholds(complete_fraction=0.8, max_gap_fraction=1.0)
    assert classify_membrane(intensity, completeness, off, gap).tolist()[1] == "intense-complete"


# ------------------------------------------------------------------------ background of the index
def test_her2_index_counts_membrane_dab_above_the_image_background() -> None:
    """A uniform DAB tint (a dim scan, a tan stroma) raises every membrane reading by the same amount;
    the background read off the tissue outside the cells takes it back out of the HER2 index."""
    from her2score.quantify.cells import CellSegmentation
    from her2score.quantify.membrane import background_dab
    from her2score.quantify.scoring import ScoreAccumulator

    cells = np.zeros((100, 100), np.int32)
    cells[10:40, 10:40], cells[10:40, 50:80] = 1, 2
    seg = CellSegmentation(nuclei=cells, cells=cells, rings=cells, cytoplasm=cells, hematoxylin_threshold=0.0)
    hema = np.full(cells.shape, 0.05, np.float32)
    rng = np.random.default_rng(0)
    for tint in (0.0, 0.15):
        dab = (tint + rng.uniform(0.0, 0.02, cells.shape)).astype(np.float32)
        background = background_dab(seg, hema, dab, np.array([0.1, 0.1]))
        assert background == pytest.approx(tint + 0.005, abs=0.003)
    frame = pd.DataFrame(
        {
            "is_tumour": [True, True],
            "membrane_dab": [0.35, 0.0],
            "completeness": [1.0, 0.0],
            "background_dab": [0.15, 0.15],
            "intensity": [2, 0],
            "membrane_class": pd.Categorical(["moderate-complete", "none"], categories=MEMBRANE_CLASSES),
        }
    )
    acc = ScoreAccumulator()
    acc.add_cells(frame)
    assert acc.summary(Thresholds())["her2_index_mean"] == pytest.approx(100 * 0.20 / 2)
    assert acc.summary(Thresholds())["her2_index"] == pytest.approx(100 * 0.20, abs=0.2)  # top tenth


def test_background_of_a_field_packed_with_stained_tumour_is_capped() -> None:
    """In a field packed with stained tumour (glands or sheets back to back, a gastric TMA core) the
    tissue outside every cell is the thin space between membranes and the palest cytoplasm carries
    the blush: read as "background" they would rise with the staining (0.3-0.44 OD in tiles of a
    synthetic 3+ core) and be taken off every membrane. Unstained tissue reads at most 0.17 OD on
    the real scans, so the background stops at MAX_BACKGROUND_DAB_OD; a real tint below it is kept."""
    from her2score.quantify.cells import CellSegmentation
    from her2score.quantify.membrane import MAX_BACKGROUND_DAB_OD, background_dab

    cells = np.zeros((100, 100), np.int32)
    cells[2:98, 2:49], cells[2:98, 51:98] = 1, 2  # two cells filling the field, a thin gap between
    seg = CellSegmentation(nuclei=cells, cells=cells, rings=cells, cytoplasm=cells, hematoxylin_threshold=0.0)
    hema = np.full(cells.shape, 0.05, np.float32)
    stained = np.full(cells.shape, 0.40, np.float32)  # the gap lies in the membranes' blur
    assert 0.15 <= MAX_BACKGROUND_DAB_OD <= 0.25
    assert background_dab(seg, hema, stained, np.array([0.3, 0.3])) == pytest.approx(MAX_BACKGROUND_DAB_OD)
    packed = CellSegmentation(
        nuclei=np.ones_like(cells),
        cells=np.ones_like(cells),
        rings=cells,
        cytoplasm=cells,
        hematoxylin_threshold=0.0,
    )  # no tissue outside the cells: the palest cytoplasm (a 0.3 OD blush) is the fallback
    assert background_dab(packed, hema, stained, np.full(20, 0.3)) == pytest.approx(MAX_BACKGROUND_DAB_OD)
    assert background_dab(packed, hema, stained, np.full(20, 0.12)) == pytest.approx(0.12)


def test_top_decile_index_follows_the_ten_percent_rule() -> None:
    """``her2_index``: the mean per-cell index of the most strongly stained tenth of the tumour
    cells. A heterogeneous 3+ (intense complete membranes in 20 % of the cells, the rest unstained)
    reads below a homogeneous 2+ (moderate complete in 60 %) by the mean index, as the rules do not:
    the top decile ranks it above. Streams over tiles: merged accumulators give the whole's value."""
    from her2score.quantify.scoring import ScoreAccumulator

    def frame(dabs: list[float]) -> pd.DataFrame:
        n = len(dabs)
        stained = np.array(dabs) > 0
        return pd.DataFrame(
            {
                "is_tumour": np.ones(n, bool),
                "membrane_dab": dabs,
                "completeness": stained.astype(float),
                "background_dab": np.zeros(n),
                "intensity": np.where(stained, 2, 0).astype(np.int8),
                "membrane_class": pd.Categorical(
                    np.where(stained, "moderate-complete", "none"), categories=MEMBRANE_CLASSES
                ),
            }
        )

    def summary(*parts: pd.DataFrame) -> dict:
        acc = ScoreAccumulator()
        for part in parts:
            piece = ScoreAccumulator()
            piece.add_cells(part)
            acc.merge(piece)
        return acc.summary(Thresholds())

    hetero3 = summary(frame([0.6] * 20 + [0.0] * 80))
    homo2 = summary(frame([0.3] * 60 + [0.0] * 40))
    assert hetero3["her2_index_mean"] < homo2["her2_index_mean"]  # 12 vs 18: the mean inverts them
    assert hetero3["her2_index"] == pytest.approx(60.0, abs=0.3)
    assert homo2["her2_index"] == pytest.approx(30.0, abs=0.3)
    split = summary(frame([0.6] * 10 + [0.0] * 40), frame([0.6] * 10 + [0.0] * 40))
    assert split["her2_index"] == hetero3["her2_index"]
    assert summary(frame([0.0] * 30))["her2_index"] == 0.0
