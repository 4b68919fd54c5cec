"""``her2score quantify`` and ``her2score calibrate`` end to end on tiny drawn images and a small slide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from her2score.cli.main import app
from her2score.stain.deconvolution import DAB, EOSIN, HEMATOXYLIN, od_to_rgb

MPP = 0.5


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def sheet(membrane_od: float, size_px: int = 320, eosin: bool = False, seed: int = 0) -> np.ndarray:
    """A sheet of round cells 18 µm apart with complete membranes of DAB OD ``membrane_od``."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size_px, :size_px] + 0.5) * MPP
    cy, cx = (yy % 18.0) - 9.0, (xx % 18.0) - 9.0
    r = np.hypot(cy, cx)
    hema = np.where(r <= 4.5, 0.35, 0.04).astype(np.float32)
    dab = np.where(np.abs(r - 7.5) <= 0.7, membrane_od, 0.0).astype(np.float32)
    other = np.where((r > 4.5) & (r < 8.5), 0.5, 0.25).astype(np.float32) if eosin else np.zeros_like(hema)
    od = hema[..., None] * _unit(HEMATOXYLIN) + dab[..., None] * _unit(DAB) + other[..., None] * _unit(EOSIN)
    od += rng.normal(0, 0.01, od.shape).astype(np.float32)
    return od_to_rgb(np.clip(od, 0, None))


def _png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quantify_images")
    (d / "a").mkdir()
    (d / "b").mkdir()
    return {
        "strong": _png(d / "a" / "case.png", sheet(1.0)),
        "negative": _png(d / "b" / "case.png", sheet(0.0)),  # same stem: outputs must not collide
        "he": _png(d / "he.png", sheet(0.0, eosin=True)),
        "blank": _png(d / "blank.png", np.full((256, 256, 3), 244, np.uint8)),
    }


def test_batch_goes_on_past_failures_and_writes_everything(images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["quantify", *(str(p) for p in images.values()), str(tmp_path / "missing.png")]
    result = CliRunner().invoke(app, [*args, "--mpp", "0.5", "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    frame = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(frame) == 5
    by_status = frame.set_index(frame["image"].map(lambda p: Path(p).parent.name + "/" + Path(p).name))
    assert by_status.loc["a/case.png", "category"] == "3+"
    assert by_status.loc["b/case.png", "category"] == "0"
    assert by_status.loc["b/case.png", "her2_0_subtype"] == "null"
    failed = frame[frame["status"] == "failed"]
    failed = failed.set_index(failed["image"].map(lambda p: Path(p).name))
    assert "H&E" in failed.loc["he.png", "error"]
    assert "no tissue" in failed.loc["blank.png", "error"]
    assert "does not exist" in failed.loc["missing.png", "error"]
    assert "failed" in result.output
    # one overlay and one cell table per scored image, named apart despite the shared stem
    assert sorted(p.name for p in out.glob("*.overlay.png")) == ["a_case.overlay.png", "b_case.overlay.png"]
    cells = pd.read_parquet(out / "a_case.cells.parquet")
    assert {"x", "y", "x_um", "y_um", "membrane_class", "completeness", "membrane_dab", "is_tumour"} <= set(
        cells
    )
    assert (cells.loc[cells.is_tumour, "membrane_class"] == "intense-complete").mean() > 0.8
    used = json.loads((out / "thresholds.json").read_text())
    assert used["thresholds"]["faint"] > 0
    assert not list(out.glob(".*part*"))  # nothing half-written left behind


def test_missing_resolution_is_reported_per_image(images: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["quantify", str(images["strong"]), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 1
    frame = pd.read_csv(tmp_path / "results.csv")
    assert "--mpp" in frame.loc[0, "error"]


def test_calibrate_then_quantify_with_the_thresholds(images: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    control = tmp_path / "control.png"
    _png(control, sheet(0.6))  # a paler 3+ control than the defaults expect
    thresholds = tmp_path / "thresholds.json"
    result = runner.invoke(
        app, ["calibrate", str(control), "--category", "3+", "--mpp", "0.5", "--out", str(thresholds), "-q"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(thresholds.read_text())
    assert data["calibration"]["category"] == "3+"
    assert data["thresholds"]["intense"] < 0.6  # scaled down to the pale control
    assert "warning" not in result.output  # 0.6 OD is paler than expected, not far off
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["quantify", str(control), "--mpp", "0.5", "--thresholds", str(thresholds), "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out / "results.csv").loc[0, "category"] == "3+"


def test_calibrate_warns_when_the_control_is_far_from_its_category(tmp_path: Path) -> None:
    control = tmp_path / "control.png"
    _png(control, sheet(0.6))  # complete 0.6 OD membranes named a 1+ control: 2.5x a 1+
    out = tmp_path / "t.json"
    result = CliRunner().invoke(
        app, ["calibrate", str(control), "--category", "1+", "--mpp", "0.5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "warning: control.png stains" in result.output


def test_bad_thresholds_file_is_one_line_and_exit_2(images: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"faint": 0.9, "moderate": 0.3}')
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "her2score", "quantify", str(images["strong"]), "--mpp", "0.5"),
            *("--thresholds", str(bad), "--out", str(tmp_path / "o")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "bad.json" in proc.stderr
    assert "faint < moderate" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_whole_slide_is_tiled_and_matches_the_single_piece_result(tmp_path: Path) -> None:
    """A small pyramidal slide scored tile by tile (2 workers) gives the result of scoring it whole."""
    pytest.importorskip("her2score.data.synth")
    from her2score.data.synth.patches import _case
    from her2score.data.synth.slides import SlideSpec, write_slide
    from her2score.quantify import quantify_file

    slide = write_slide(
        tmp_path / "s.tiff",
        SlideSpec(_case("3+", "her2", np.random.default_rng(0)), seed=1, size_mm=(1.0, 0.6)),
    )
    whole = quantify_file(slide, tmp_path / "whole", whole_image_pixels=1 << 30).row
    tiled = quantify_file(slide, tmp_path / "tiled", workers=2, whole_image_pixels=0).row
    assert whole["mode"] == "image"
    assert tiled["mode"].startswith("tiled")
    assert tiled["n_cells"] == pytest.approx(whole["n_cells"], rel=0.1)
    # The same measurements (a category alone would flip on a case sitting at a 10 % cut).
    for key in ("pct_none", "pct_faint_incomplete", "pct_intense_complete"):
        assert tiled[key] == pytest.approx(whole[key], abs=4.0), key
    assert tiled["her2_index"] == pytest.approx(whole["her2_index"], rel=0.15)
    cells = pd.read_parquet(tmp_path / "tiled" / "s.cells.parquet")
    assert cells["cell_id"].is_unique
    # no cell counted twice in the overlaps: nearest neighbours are never closer than 2 µm
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(cells[["x_um", "y_um"]].to_numpy()).query(cells[["x_um", "y_um"]].to_numpy(), k=2)
    assert dist[:, 1].min() > 2.0
    assert (tmp_path / "tiled" / "s.overlay.png").stat().st_size > 0


def test_help_does_not_import_torch() -> None:
    code = "import sys; import her2score.cli.main, her2score.cli.quantify; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_rules_option_reaches_the_results(images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["quantify", str(images["strong"]), "--mpp", "0.5", "--rules", "gastric", "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out / "results.csv").loc[0]
    assert row["her2_rules"] == "gastric"
    assert row["category"] == "3+"
    assert json.loads((out / "thresholds.json").read_text())["thresholds"]["her2_rules"] == "gastric"
    default = tmp_path / "default"
    result = CliRunner().invoke(
        app, ["quantify", str(images["strong"]), "--mpp", "0.5", "--out", str(default), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(default / "results.csv").loc[0, "her2_rules"] == "breast"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--rules", "lung"), "HER2 rules must be one of breast, gastric (got 'lung')"),
        (("--rules", "gastric", "--marker", "ki67"), "--rules applies to --marker her2"),
    ],
)
def test_bad_rules_are_one_line_and_exit_2(
    images: dict[str, Path], tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "her2score", "quantify", str(images["strong"]), "--mpp", "0.5"),
            *extra,
            *("--out", str(tmp_path / "o")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is written
