"""CLI end to end on slides her2score did not make: train -> evaluate -> predict, plus bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from tiny_slides import make_tiny_cohort

from her2score.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cohort(tmp_path_factory.mktemp("cli_cohort"), n=12, seed=3)


def _config(folder: Path) -> Path:
    path = folder / "fast.yaml"
    path.write_text(
        "input_size: 64\nbatch_size: 4\nbackbone: convnext_atto\nn_boot: 20\nwarmup_epochs: 0.5\n"
        f"cache_dir: {folder / 'cache'}\naugment:\n  blur_prob: 0.0\n"
    )
    return path


@pytest.mark.slow
def test_train_evaluate_predict_from_a_hand_written_manifest(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--manifest", str(cohort), "--task", "her2-3way", "--model", "lowres-convnext",
         "--out", str(run), "--config", str(_config(tmp_path)), "--epochs", "1", "--device", "cpu", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in (
        "model.safetensors",
        "config.yaml",
        "metrics.json",
        "predictions.csv",
        "report.html",
        "roc.png",
    ):
        assert (run / name).is_file(), name

    evaluation = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(run / "model.safetensors"), "--manifest", str(cohort), "--out",
         str(evaluation), "--n-boot", "20", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "macro AUC" in result.output
    assert len(pd.read_csv(evaluation / "predictions.csv")) == 12

    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide at all")
    slides = sorted((cohort.parent / "slides").glob("*.tiff"))[:3]
    preds = tmp_path / "preds.csv"
    result = runner.invoke(
        app,
        ["predict", "--model", str(run / "model.safetensors"), *map(str, slides), str(broken), "--out",
         str(preds), "--heatmaps", str(tmp_path / "heat"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # some slides failed: listed, and the status says so
    assert "broken.svs" in result.output
    frame = pd.read_csv(preds, dtype={"predicted": str})  # class "0" is a label, not a number
    assert list(frame.columns) == ["slide", "predicted", "prob_0", "prob_low", "prob_high", "status"]
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 3
    assert set(ok["predicted"]) <= {"0", "low", "high"}
    assert ok[["prob_0", "prob_low", "prob_high"]].sum(axis=1).round(4).eq(1).all()
    assert frame["status"].iloc[-1].startswith("skipped")
    assert len(list((tmp_path / "heat").glob("*.png"))) == 3


def test_cli_errors_are_one_line(cohort: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"slide,her2\n{cohort.parent / 'slides' / 'case_000.tiff'},5+\n")
    proc = subprocess.run(
        [sys.executable, "-m", "her2score", "train", "--manifest", str(bad), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "bad.csv: row 2: unknown HER2 score '5+'" in proc.stderr
    assert "Traceback" not in proc.stderr
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    result = runner.invoke(
        app, ["predict", "--model", str(foreign), str(cohort), "--out", str(tmp_path / "p.csv")]
    )
    assert result.exit_code != 0
    assert "not a her2score model" in str(result.exception)


def test_models_lists_the_registry_without_importing_torch() -> None:
    code = (
        "import sys; from her2score.cli.main import main\n"
        "try:\n    main(['models'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "lowres-convnext" in proc.stdout
    assert "NO-TORCH" in proc.stdout
