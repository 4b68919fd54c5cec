"""``her2score demo`` end to end on a very small synthetic cohort: every output a user is pointed to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2score.cli.main import app


@pytest.mark.slow
def test_demo_writes_cohort_model_metrics_report_and_heatmaps(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "12", "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output
    run = out / "run"
    for name in ("model.safetensors", "metrics.json", "report.html", "roc.png", "confusion.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["auc_macro"] <= 1.0
    assert metrics["n"] >= 3
    assert list((run / "heatmaps").glob("*.png"))
    # a second run reuses the cohort and trains afresh
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "12", "--epochs", "1", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "reusing the synthetic cohort" in again.output
