"""``her2score info`` and ``her2score doctor``, including one clear error line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "slide"))
from slide_fixtures import BAD_INPUTS, LEVEL0_MPP, REAL, SIZE, make_bad_files, synthetic_tissue, write_pyramid

from her2score.cli.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process, exactly as the console script does; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = synthetic_tissue(SIZE[0] // 2, SIZE[1] // 2, seed=1)
    return write_pyramid(tmp_path_factory.mktemp("cli") / "case.tif", rgb, levels=3)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, slide_path: Path) -> dict[str, tuple[Path, str]]:
    return make_bad_files(tmp_path_factory.mktemp("cli-bad"), slide_path)


def test_info_json(slide_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["info", str(slide_path), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["width"], report["height"]) == (SIZE[0] // 2, SIZE[1] // 2)
    assert report["mpp"] == pytest.approx(LEVEL0_MPP)
    assert report["mpp_source"] == "metadata"
    assert [lv["mpp"] for lv in report["levels"]] == pytest.approx([0.25, 0.5, 1.0])
    assert report["vendor"] == "generic-tiff"
    assert 0.15 < report["tissue_fraction"] < 0.5


def test_info_table(slide_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["info", str(slide_path)], capsys)
    assert code == 0
    assert "2048 x 1536 px" in out
    assert "0.2500 µm/px" in out
    assert "tissue" in out


def test_info_plain_image_needs_mpp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    path = tmp_path / "patch.png"
    Image.fromarray(synthetic_tissue(256, 200)).save(path, format="JPEG")  # JPEG bytes, .png name
    code, out, _ = run_cli(["info", str(path), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["mpp"] is None
    code, out, _ = run_cli(["info", str(path), "--mpp", "0.5", "--json"], capsys)
    report = json.loads(out)
    assert report["mpp"] == 0.5
    assert report["mpp_source"] == "given"
    assert report["format"] == "jpeg"


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_info_bad_input_is_one_error_line(
    name: str, bad_files: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    path, cause = bad_files[name]
    code, out, err = run_cli(["info", str(path), "--mpp", "0.5"], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ")
    assert cause in lines[0].lower()
    assert "Traceback" not in err


def test_info_subprocess_has_no_traceback(bad_files: dict) -> None:
    path, _ = bad_files["truncated-tiff"]
    proc = subprocess.run(
        [sys.executable, "-m", "her2score", "info", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}: truncated TIFF")
    assert "Traceback" not in proc.stderr


@pytest.mark.realdata
def test_info_on_real_svs(capsys: pytest.CaptureFixture[str]) -> None:
    svs = REAL / "slides" / "CMU-1-Small-Region.svs"
    if not svs.exists():
        pytest.skip(f"real data not present: {svs}")
    code, out, _ = run_cli(["info", str(svs), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["mpp"] == pytest.approx(0.499, abs=0.001)
    assert report["vendor"] == "aperio"
    assert report["objective_power"] == 20
    assert 0.25 < report["tissue_fraction"] < 0.55
    code, out, _ = run_cli(["info", str(svs)], capsys)
    assert "0.4990 µm/px" in out


def test_doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HER2SCORE_CACHE", str(tmp_path / "cache"))
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    checks = json.loads(out)
    assert set(checks) == {"python", "openslide", "torch", "threads", "cache"}
    assert checks["openslide"]["ok"]
    assert "4." in checks["openslide"]["detail"]
    assert "CUDA" in checks["torch"]["detail"]
    assert str(tmp_path / "cache") in checks["cache"]["detail"]
    assert code == (0 if all(c["ok"] for c in checks.values()) else 1)


def test_doctor_reports_unwritable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HER2SCORE_CACHE", str(blocker / "cache"))
    code, out, _ = run_cli(["doctor"], capsys)
    assert code == 1
    assert "FAIL" in out
    assert np.any(["cache" in line and "not writable" in line for line in out.splitlines()])


def test_info_blank_slide_is_described_then_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = np.full((1024, 1536, 3), 243, np.uint8)
    path = write_pyramid(tmp_path / "blank.tif", blank, mpp=0.5, levels=2)
    code, out, err = run_cli(["info", str(path), "--json"], capsys)
    assert code == 2
    assert json.loads(out)["tissue_fraction"] == 0.0
    assert err.strip() == err.strip().splitlines()[0]
    assert err.startswith(f"error: {path}: no tissue found")
    code, _, _ = run_cli(["info", str(path), "--no-tissue"], capsys)
    assert code == 0
