"""``her2score features`` writes feature files, features.csv and a bag manifest that ``train`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from her2score.cli.main import app


def test_features_command_writes_a_bag_manifest_that_trains(slide_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"
    args = ["features", "--manifest", str(slide_manifest), "--out", str(out), "--tile", "64", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 extracted, 0 reused" in result.output
    table = pd.read_csv(out / "features.csv")
    assert list(table["status"]) == ["extracted"] * 6
    bags = pd.read_csv(out / "manifest.csv", dtype=str)
    assert list(bags.columns) == list(pd.read_csv(slide_manifest).columns)
    assert all((out / s).is_file() for s in bags["slide"])
    assert json.loads((out / "bag_config.json").read_text()) == {"model_args": {"in_dim": 29}}
    again = CliRunner().invoke(app, args)
    assert "0 extracted, 6 reused" in again.output

    run = tmp_path / "run"
    trained = CliRunner().invoke(
        app,
        ["train", "--manifest", str(out / "manifest.csv"), "--task", "her2-4way", "--model", "mean-mil",
         "--config", str(out / "bag_config.json"), "--epochs", "1", "--out", str(run), "--quiet"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert (run / "model.safetensors").is_file() or list(run.rglob("model.safetensors"))
