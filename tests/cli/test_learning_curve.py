"""``her2score learning-curve``: registered, and bad sizes are refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2score.cli.main import app
from her2score.errors import ConfigError

runner = CliRunner()


def test_learning_curve_is_a_command() -> None:
    result = runner.invoke(app, ["learning-curve", "--help"])
    assert result.exit_code == 0
    assert "--sizes" in result.output


@pytest.mark.parametrize(("sizes", "message"), [("a,b", "comma-separated"), ("2,8", "4 slides or more")])
def test_bad_sizes_are_refused(tmp_path: Path, sizes: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,her2\nx.tiff,0\n")
    result = runner.invoke(
        app, ["learning-curve", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--sizes", sizes]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert message in str(result.exception)
