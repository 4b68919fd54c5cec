"""Nuclear markers (ER, PR, Ki-67) on synthetic IHC patches whose per-nucleus truth is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score import rules
from her2score.data.synth.patches import render_ihc_patch
from her2score.quantify import Thresholds, quantify_batch, quantify_nuclear_image
from her2score.quantify.nuclear import NuclearThresholds, score_nuclear_counts

MPP = 0.5


def _truth_pct(truth: pd.DataFrame) -> float:
    tumour = truth[truth["is_tumour"]]
    return 100.0 * float(tumour["nuclear_positive"].mean())


def _png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("seed", [3, 9])
def test_er_percent_positive_near_truth(seed: int) -> None:
    rgb, truth = render_ihc_patch("pos", size=(512, 512), mpp=MPP, seed=seed, site=seed % 4, marker="er")
    result = quantify_nuclear_image(rgb, MPP)
    row = result.accumulator.summary("er", Thresholds())
    true_pct = _truth_pct(truth)
    assert row["scorable"]
    assert abs(row["pct_positive"] - true_pct) < 8.0, (row["pct_positive"], true_pct)
    assert row["receptor_status"] == rules.receptor_group(true_pct)
    assert 0 <= row["h_score"] <= 300
    assert 2 <= row["allred"] <= 8


def test_negative_image_reads_negative() -> None:
    rgb, truth = render_ihc_patch("neg", size=(512, 512), mpp=MPP, seed=1, site=1, marker="pr")
    assert _truth_pct(truth) == 0.0
    row = quantify_nuclear_image(rgb, MPP).accumulator.summary("pr", Thresholds())
    assert row["scorable"]
    assert row["n_nuclei"] >= 50
    assert row["pct_positive"] < 1.0
    assert row["receptor_status"] == "negative"
    assert row["category"] == "negative"
    assert row["allred"] == 0


def test_ki67_index_on_known_fraction() -> None:
    # The renderer stains nuclei the same way for any nuclear marker: an ER "pos" patch is a
    # Ki-67 image whose positive fraction is known.
    rgb, truth = render_ihc_patch("pos", size=(512, 512), mpp=MPP, seed=2, site=2, marker="er")
    row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
    assert abs(row["ki67_index"] - _truth_pct(truth)) < 8.0
    assert row["ki67_index"] == row["pct_positive"]
    assert row["allred"] is None
    assert row["receptor_status"] == ""


def test_scores_from_counts() -> None:
    row = score_nuclear_counts("er", [50, 10, 20, 20], 120)
    assert row["pct_positive"] == pytest.approx(50.0)
    assert row["h_score"] == pytest.approx(10 + 40 + 60)
    assert (row["allred_proportion"], row["allred_intensity"], row["allred"]) == (4, 2, 6)
    assert row["receptor_status"] == "positive"
    assert score_nuclear_counts("er", [95, 5, 0, 0], 100)["receptor_status"] == "low"
    few = score_nuclear_counts("pr", [5, 5, 0, 0], 10)
    assert not few["scorable"]
    assert few["category"] == "not scorable"
    assert "too few" in few["reason"]
    assert rules.allred_proportion_score(0.5) == 1
    assert rules.allred_proportion_score(67) == 5


def test_thresholds_are_checked() -> None:
    from her2score.errors import ConfigError

    with pytest.raises(ConfigError):
        NuclearThresholds(weak=0.5, moderate=0.4)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nuclear") / "in"
    rgb, _ = render_ihc_patch("pos", size=(384, 384), mpp=MPP, seed=4, site=0, marker="er")
    _png(d / "er_pos.png", rgb)
    return d


def test_cli_marker_writes_columns(images: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2score.cli.main import app

    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["quantify", str(images), "--out", str(out), "--mpp", "0.5", "--marker", "er"]
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out / "results.csv")
    for col in ("marker", "n_nuclei", "pct_positive", "h_score", "allred", "receptor_status", "ki67_index"):
        assert col in frame.columns
    assert frame.loc[0, "marker"] == "er"
    assert frame.loc[0, "status"] == "ok"
    cells = pd.read_parquet(out / "er_pos.cells.parquet")
    assert {"positive", "intensity", "intensity_class", "nuclear_dab", "is_tumour"} <= set(cells.columns)
    assert (out / "er_pos.overlay.png").stat().st_size > 0


def test_her2_default_unchanged_by_marker_flag(images: Path, tmp_path: Path) -> None:
    plain = quantify_batch([images], tmp_path / "plain", mpp=MPP)
    flagged = quantify_batch([images], tmp_path / "flag", mpp=MPP, marker="her2")
    assert "marker" not in plain.frame.columns
    a, b = plain.frame.drop(columns="image"), flagged.frame.drop(columns="image")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "plain" / "er_pos.cells.parquet"),
        pd.read_parquet(tmp_path / "flag" / "er_pos.cells.parquet"),
    )


def test_hard_ki67_tiles_touching_nuclei_faint_positives_and_lymphocytes() -> None:
    """Crowded, touching nuclei, faint positives and cycling lymphocytes (an independent renderer):
    the index over tumour nuclei stays near the truth, and the lymphocyte leak is kept out."""
    from her2score.data.synth.ki67 import render_ki67_tile, true_ki67_index

    found, truth_pct = [], []
    for i, fraction in enumerate((0.05, 0.35, 0.7)):
        rgb, truth = render_ki67_tile(fraction, size=768, mpp=MPP, seed=40 + i)
        row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
        found.append(row["ki67_index"])
        truth_pct.append(true_ki67_index(truth))
        assert abs(row["ki67_index"] - truth_pct[-1]) < 8.0, (row["ki67_index"], truth_pct[-1])
        assert row["n_lymphocytes"] > 0
    assert found == sorted(found)


def test_positive_and_negative_neighbours_are_not_merged() -> None:
    """Two touching nuclei, one brown and one blue, are two nuclei: one positive, one negative."""
    from her2score.quantify.nuclear import detect_nuclei

    yy, xx = np.mgrid[0:80, 0:120].astype(np.float32)
    hema = np.full((80, 120), 0.03, np.float32)
    dab = np.zeros((80, 120), np.float32)
    r_left = np.hypot(yy - 40, xx - 48) / 11  # 11 px = 5.5 µm radius at 0.5 µm/px
    r_right = np.hypot(yy - 40, xx - 68) / 11  # centres 10 µm apart: they overlap
    dome_left, dome_right = np.clip(1.2 - 0.4 * r_left**2, 0, None), np.clip(1.2 - 0.4 * r_right**2, 0, None)
    left, right = r_left < 1, r_right < 1
    hema[right] = 0.45 * dome_right[right]
    hema[left] = 0.15 * dome_left[left]
    dab[left] = 0.6 * dome_left[left]
    labels = detect_nuclei(hema, dab, MPP)
    assert labels.max() == 2
    assert labels[40, 44] != labels[40, 72]
    assert labels[40, 44] > 0
    assert labels[40, 72] > 0


def test_nuclear_thresholds_from_json_and_flags(tmp_path: Path) -> None:
    import json

    from her2score.errors import ConfigError
    from her2score.quantify.nuclear import load_nuclear_thresholds

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"nuclear_thresholds": {"weak": 0.1, "moderate": 0.3, "strong": 0.6}}))
    t = load_nuclear_thresholds(path, {"weak": 0.2, "strong": None})
    assert (t.weak, t.moderate, t.strong) == (0.2, 0.3, 0.6)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weak": 0.1, "colour": 3}))
    with pytest.raises(ConfigError, match=r"bad\.json.*colour"):
        load_nuclear_thresholds(bad)
    with pytest.raises(ConfigError, match="weak < moderate"):
        load_nuclear_thresholds(None, {"weak": 0.4})


def test_cli_positive_od_moves_the_threshold(images: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2score.cli.main import app

    def run(*extra: str) -> float:
        out = tmp_path / "-".join(extra or ("plain",))
        args = ["quantify", str(images), "--out", str(out), "--mpp", "0.5", "--marker", "ki67", *extra]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        return float(pd.read_csv(out / "results.csv").loc[0, "pct_positive"])

    assert run("--positive-od", "0.28") < run()
    res = CliRunner().invoke(
        app, ["quantify", str(images), "--out", str(tmp_path / "h"), "--positive-od", "0.2"]
    )
    assert res.exit_code != 0


REAL_IHC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_IHC / "bci-her2-pairs").is_dir(), reason="real images absent")
def test_real_her2_stained_nuclei_read_negative_as_a_nuclear_marker() -> None:
    """HER2 is membranous: on real HER2 IHC with faint or no membrane staining, the nuclei carry no DAB.
    With the image's own hematoxylin, a nuclear read of those patches is (nearly) all negative
    (with the published vector it read 85-100 % positive on four of them)."""
    from PIL import Image

    names = ("00000_train_1+.png", "00003_train_1+.png", "00640_test_1+.png", "00007_test_1+.png")
    names += ("00001_train_3+.png", "00002_train_3+.png")  # "3+" slides, these patches stroma and fat
    names += ("00118_test_0.png",)  # the 0 patch: pale brown stroma is not taken for nuclei
    paths = [REAL_IHC / "bci-her2-pairs" / "IHC" / name for name in names]
    paths.append(REAL_IHC / "mist-her2-pairs" / "IHC" / "100M2004069_21_13.jpg")  # faint membranes
    for name in paths:
        rgb = np.asarray(Image.open(name).convert("RGB"))
        result = quantify_nuclear_image(rgb, MPP)
        row = result.accumulator.summary("ki67", Thresholds())
        assert "nuclear-hematoxylin" in result.stain_source
        assert row["pct_positive"] < 5.0, (name, row["pct_positive"])


INTENSE_MEMBRANES = (
    "bci-her2-pairs/IHC/00052_test_3+.png",
    "bci-her2-pairs/IHC/00057_test_3+.png",
    "bci-her2-pairs/IHC/00361_test_2+.png",
    "mist-her2-pairs/IHC/19M2102438_31_28.jpg",
    "mist-her2-pairs/IHC/28M2101987_31_31.jpg",
)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_IHC / "bci-her2-pairs").is_dir(), reason="real images absent")
@pytest.mark.xfail(
    strict=True,
    reason="known limit: intense membrane and cytoplasmic DAB is taken for nuclear (whole cells and "
    "nests segmented as brown nuclei); 37-82 % positive as Ki-67 (README, nuclear markers)",
)
@pytest.mark.parametrize("name", INTENSE_MEMBRANES)
def test_real_intense_her2_membranes_are_not_nuclear_staining(name: str) -> None:
    """Every nucleus of a HER2 IHC patch is Ki-67 negative: a nuclear read of the strongly
    membrane-stained patches should be near 0 %. It is not yet (strict xfail: passes once fixed)."""
    from PIL import Image

    rgb = np.asarray(Image.open(REAL_IHC / name).convert("RGB"))
    row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
    assert row["ki67_index"] < 10.0, (name, row["ki67_index"])


def test_a_tinted_scan_does_not_turn_its_stroma_into_nuclei() -> None:
    """Dim or tinted scans read 0.12-0.18 OD of "DAB" over bare stroma (real BCI 00001, 00002, 00004,
    00011): with the brown foreground at a fixed 0.15 OD the whole stroma became "nuclei" (real 00001:
    2,424 tumour nuclei estimated where its H&E shows ~100). Above the image's unstained floor, a
    tinted stroma with 12 drawn nuclei (4 of them brown) gives those nuclei."""
    from scipy import ndimage as ndi

    from her2score.quantify.nuclear import detect_nuclei

    rng = np.random.default_rng(0)
    n = 200  # 100 µm at 0.5 µm/px
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    hema = np.full((n, n), 0.03, np.float32)
    dab = np.full((n, n), 0.0, np.float32)
    centres = [(30 + 45 * i, 30 + 45 * j) for i in range(4) for j in range(3)]
    for k, (cy, cx) in enumerate(centres):
        disk = np.hypot(yy - cy, xx - cx) <= 9
        if k % 3 == 0:
            hema[disk], dab[disk] = 0.15, 0.5
        else:
            hema[disk] = 0.35
    noise = ndi.gaussian_filter(rng.normal(0, 0.02, (n, n)), 2).astype(np.float32)
    for tint in (0.0, 0.16):
        labels = detect_nuclei(hema + noise, dab + np.float32(tint) + noise, MPP)
        assert labels.max() == len(centres), tint
        assert (labels > 0).mean() < 0.25  # 12 nuclei of 9 px radius cover 8 % of the field


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_IHC / "bci-her2-pairs").is_dir(), reason="real images absent")
def test_real_tinted_stroma_is_not_counted_as_thousands_of_nuclei() -> None:
    """Real BCI patches of stroma and fat on dim scans (DAB floor 0.14-0.16 OD; their H&E pairs show a
    few hundred nuclei at most): the nuclear mode estimated 2,400-2,900 tumour nuclei on each, the whole
    stroma cut into "nuclei" (overlay of 00001 looked at by eye); now 275-564."""
    from PIL import Image

    for name in ("00001_train_3+.png", "00004_train_1+.png", "00011_test_3+.png"):
        rgb = np.asarray(Image.open(REAL_IHC / "bci-her2-pairs" / "IHC" / name).convert("RGB"))
        row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
        assert row["n_nuclei"] < 1000, (name, row["n_nuclei"])


def test_merged_nuclei_count_as_several_in_the_index() -> None:
    """A blob of two touching negative nuclei counts twice in the denominator; a clump too large for
    one nucleus is scored as several tumour nuclei, not dropped (dropping it over-calls the index)."""
    from skimage.draw import disk, ellipse

    from her2score.quantify.membrane import nucleus_shapes
    from her2score.quantify.nuclear import NuclearAccumulator, measure_nuclei

    labels = np.zeros((240, 240), np.int32)
    centres = [(20 + 24 * (i // 8), 20 + 24 * (i % 8)) for i in range(24)]  # a nest at 12 µm spacing
    for i, (y, x) in enumerate(centres, start=1):
        labels[disk((y, x), 9, shape=labels.shape)] = i  # ~64 µm² at 0.5 µm/px: one nucleus
    labels[ellipse(100, 40, 9, 18, shape=labels.shape)] = 25  # two touching nuclei as one object
    labels[ellipse(122, 130, 18, 36, shape=labels.shape)] = 26  # a clump of ~8 (over 250 µm²)
    hema = np.where(labels > 0, 0.3, 0.02).astype(np.float32)
    dab = np.where(labels <= 6, 0.4, 0.0).astype(np.float32) * (labels > 0)  # six single positives
    nuclei = measure_nuclei(labels, hema, dab, MPP)
    est = dict(zip(nuclei["cell_id"], nuclei["n_nuclei_est"], strict=True))
    assert nuclei["is_tumour"].all(), nuclei["kind"].value_counts()
    assert est[1] == 1
    assert est[25] == 2
    assert est[26] >= 6
    area = nucleus_shapes(labels, hema)["area"] * MPP**2
    assert area[25] > Thresholds().tumour_nucleus_max_um2  # label 26: too large for one nucleus
    acc = NuclearAccumulator()
    acc.add_nuclei(nuclei)
    row = acc.summary("ki67", Thresholds())
    assert row["n_nuclei"] == int(nuclei["n_nuclei_est"].sum())
    assert row["ki67_index"] == pytest.approx(100 * 6 / row["n_nuclei"])


def test_an_object_too_large_for_a_clump_of_nuclei_is_not_scored() -> None:
    """A brown blob the size of ~40 nuclei inside a nest (a fold, stain precipitate) is not counted."""
    from skimage.draw import disk, ellipse

    from her2score.quantify.nuclear import MAX_NUCLEI_PER_OBJECT, measure_nuclei

    labels = np.zeros((200, 200), np.int32)
    for i, (y, x) in enumerate(((y, x) for y in range(12, 200, 24) for x in range(12, 200, 24)), start=1):
        labels[disk((y, x), 9, shape=labels.shape)] = i
    blob = labels.max() + 1
    labels[ellipse(100, 100, 40, 80, shape=labels.shape)] = blob
    hema = np.where(labels > 0, 0.3, 0.02).astype(np.float32)
    dab = np.where(labels == blob, 0.6, 0.0).astype(np.float32)
    nuclei = measure_nuclei(labels, hema, dab, MPP).set_index("cell_id")
    assert (nuclei.loc[nuclei.index != blob, "n_nuclei_est"] <= 1).all()  # singles (some cut)
    assert not nuclei.loc[blob, "is_tumour"]
    assert nuclei.loc[blob, "n_nuclei_est"] == 0
    assert nuclei["n_nuclei_est"].max() <= MAX_NUCLEI_PER_OBJECT


def test_a_weak_counterstain_does_not_lose_the_negative_nuclei() -> None:
    """Hematoxylin at 0.4x: with DAB counted up to a fixed 0.3 OD in the nuclear density, positives
    were so much denser than the pale negatives that the foreground threshold fell between them and
    the index read high (+8 to +13 points here); DAB now counts up to the image's own hematoxylin level."""
    from her2score.data.synth.ki67 import render_ki67_tile, true_ki67_index
    from her2score.quantify.nuclear import NucleusParams

    for seed in (2, 3):
        rgb, truth = render_ki67_tile(0.5, size=384, mpp=MPP, seed=seed, hematoxylin_scale=0.4)
        true = true_ki67_index(truth)
        row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
        assert abs(row["ki67_index"] - true) < 4.0, (seed, row["ki67_index"], true)
        fixed = NucleusParams(min_dab_cap_od=0.3)  # the former fixed cap (this tile's level is ~0.13)
        old = quantify_nuclear_image(rgb, MPP, nucleus_params=fixed).accumulator.summary("ki67", Thresholds())
        assert old["ki67_index"] - true > 6.0, (seed, old["ki67_index"], true)


def _drawn_nuclei(extra: list[tuple[str, tuple]]) -> tuple[np.ndarray, np.ndarray]:
    """A nest of 24 tumour nuclei (~64 µm², hematoxylin 0.4 OD, blurred) and ``extra`` objects drawn
    with ``skimage.draw`` (``(kind, args)``: ``disk`` ((y, x), r) or ``ellipse`` (y, x, ry, rx)); labels
    and the hematoxylin map."""
    from skimage.draw import disk, ellipse

    labels = np.zeros((240, 240), np.int32)
    hema = np.zeros(labels.shape, np.float32)
    for i, (y, x) in enumerate(((20 + 24 * (i // 8), 20 + 24 * (i % 8)) for i in range(24)), start=1):
        labels[disk((y, x), 9, shape=labels.shape)] = i
    hema[labels > 0] = 0.4
    for k, (shape, args) in enumerate(extra, start=25):
        rr, cc = disk(*args, shape=labels.shape) if shape == "disk" else ellipse(*args, shape=labels.shape)
        labels[rr, cc] = k
    return labels, hema


def test_small_dark_nuclei_are_lymphocytes_by_their_size_at_half_maximum() -> None:
    """A dark lymphocyte is segmented well beyond its edge (the image's threshold reaches far down its
    blurred flank): drawn 5 px in radius (20 µm²) and labelled 8 px (50 µm², over the 45 µm² cap) it
    passed as a tumour nucleus. Its size at half its own density tells it."""
    from scipy import ndimage as ndi
    from skimage.draw import disk

    from her2score.quantify.nuclear import measure_nuclei

    centres = [(100 + 40 * (i // 3), 40 + 60 * (i % 3)) for i in range(6)]
    labels, hema = _drawn_nuclei([("disk", (c, 8)) for c in centres])
    for y, x in centres:
        hema[disk((y, x), 5, shape=hema.shape)] = 1.0
    hema = ndi.gaussian_filter(hema, 1.0).astype(np.float32)
    nuclei = measure_nuclei(labels, hema, np.zeros_like(hema), MPP).set_index("cell_id")
    small = nuclei.loc[25:]
    assert (small["nucleus_area_um2"] > NuclearThresholds().lymphocyte_max_um2).all()
    assert (small["kind"] == "lymphocyte").all(), small["kind"].tolist()
    assert (nuclei.loc[:24, "kind"] == "tumour").all()


def test_a_wide_elongated_object_in_a_nest_is_merged_tumour_nuclei_not_stroma() -> None:
    """Two touching tumour nuclei merged into one object are elongated (3:1 here) but as wide as a
    tumour nucleus: counted as a clump of tumour nuclei, not as a stromal spindle (which took negative
    tumour nuclei out of the denominator); a thin spindle (2.5 µm wide) stays stromal."""
    from her2score.quantify.nuclear import measure_nuclei

    labels, hema = _drawn_nuclei([("ellipse", (92, 60, 9, 27)), ("ellipse", (92, 160, 2, 16))])
    hema[labels > 24] = 0.4
    nuclei = measure_nuclei(labels, hema, np.zeros_like(hema), MPP).set_index("cell_id")
    assert nuclei.loc[25, "nucleus_elongation"] > Thresholds().tumour_max_elongation
    assert nuclei.loc[25, "kind"] == "tumour"
    assert nuclei.loc[25, "n_nuclei_est"] >= 2
    assert nuclei.loc[26, "kind"] == "stromal"


def test_pct_positive_all_nuclei_counts_every_kind() -> None:
    """``pct_positive_all_nuclei``: every nucleus found (tumour by its estimated count, lymphocytes and
    stromal nuclei once each), the denominator of a truth that labels every cell; ``ki67_index`` keeps
    to tumour nuclei."""
    from scipy import ndimage as ndi

    from her2score.quantify.nuclear import NUCLEAR_RESULT_COLUMNS, NuclearAccumulator, measure_nuclei

    centres = [(100 + 40 * (i // 3), 40 + 60 * (i % 3)) for i in range(6)]
    labels, hema = _drawn_nuclei([("disk", (c, 5)) for c in centres])
    hema[labels > 24] = 1.0
    hema = ndi.gaussian_filter(hema, 0.5).astype(np.float32)
    dab = np.where((labels > 0) & ((labels <= 3) | (labels >= 25)), 0.4, 0.0).astype(np.float32)
    nuclei = measure_nuclei(labels, hema, dab, MPP)
    assert (nuclei["kind"] == "lymphocyte").sum() == 6
    acc = NuclearAccumulator()
    acc.add_nuclei(nuclei)
    row = acc.summary("ki67", Thresholds())
    assert row["ki67_index"] == pytest.approx(100 * 3 / 24)
    assert row["pct_positive_all_nuclei"] == pytest.approx(100 * 9 / 30)
    assert "pct_positive_all_nuclei" in NUCLEAR_RESULT_COLUMNS
    empty = NuclearAccumulator().summary("ki67", Thresholds())
    assert empty["pct_positive_all_nuclei"] is None


def test_a_tile_full_of_tissue_and_lymphocytes_is_not_taken_for_pen_ink() -> None:
    """A Ki-67 tile with no glass and a dense lymphocyte infiltrate: the slide tissue detector took the
    lymphocytes for blue pen ink and its margin covered the tile ("no tissue"); the nuclear mode falls
    back to the optical-density mask and scores it."""
    from her2score.data.synth.ki67 import render_ki67_tile, true_ki67_index
    from her2score.quantify.pipeline import tissue_mask_for

    rgb, truth = render_ki67_tile(0.5, size=768, mpp=MPP, seed=101, lymphocyte_fraction=0.5)
    assert tissue_mask_for(rgb, MPP).sum() == 0  # what the slide detector gives on this tile
    row = quantify_nuclear_image(rgb, MPP).accumulator.summary("ki67", Thresholds())
    assert abs(row["ki67_index"] - true_ki67_index(truth)) < 6.0


def test_a_black_frame_is_still_no_tissue() -> None:
    """The optical-density fallback (a field filled with tissue) must not take a black frame or a
    scanner's black padding for tissue: it read as a field of nuclei (``pct_positive_all_nuclei``
    100 %) instead of "no tissue"."""
    from her2score.errors import NoTissueError

    black = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(NoTissueError):
        quantify_nuclear_image(black, MPP)
    # A tile of a tiled slide (no tissue required): nothing found on the black.
    result = quantify_nuclear_image(black, MPP, check_stain=False, require_tissue=False)
    assert not result.tissue.any()
    assert len(result.nuclei) == 0
