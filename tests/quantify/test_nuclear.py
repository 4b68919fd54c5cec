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
