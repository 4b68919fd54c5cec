"""Options that must not be ignored: demo --epochs 0, train --resume/--overwrite together."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from her2score.cli.main import app

runner = CliRunner()


def test_demo_refuses_zero_epochs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--epochs", "0", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "--epochs" in result.output
    assert not (tmp_path / "demo").exists()


def test_train_help_names_overwrite() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "--overwrite" in result.output
