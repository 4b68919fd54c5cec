"""``her2score demo`` end to end on a very small synthetic cohort: every output a user is pointed to."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from her2score.cli.main import app


def _no_nan(token: str) -> float:
    raise AssertionError(f"metrics.json is not strict JSON: {token}")


@pytest.mark.slow
def test_demo_writes_cohort_model_metrics_report_and_heatmaps(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "12", "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output
    run = out / "run"
    for name in ("model.safetensors", "metrics.json", "report.html", "roc.png", "confusion.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text(), parse_constant=_no_nan)
    preds = pd.read_csv(run / "predictions.csv")
    assert metrics["n"] == len(preds) >= 3
    probs = preds[[f"prob_{c}" for c in ("0", "low", "high")]].to_numpy()
    if preds["y_true"].nunique() == 3:  # the reported AUC is the one its own predictions give
        y = preds["y_true"].astype(str).map({"0": 0, "low": 1, "high": 2})
        auc = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=[0, 1, 2])
        assert metrics["auc_macro"] == pytest.approx(auc, abs=1e-9)
    assert list((run / "heatmaps").glob("*.png"))
    # a second run reuses the cohort and trains afresh
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "12", "--epochs", "1", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "reusing the synthetic cohort" in again.output


def test_demo_refuses_to_delete_a_run_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from her2score.cli.main import main

    out = tmp_path / "mine"
    precious = out / "run" / "results.csv"
    precious.parent.mkdir(parents=True)
    precious.write_text("a user's own results\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(out), "--n", "12", "--epochs", "1", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(out / "run") in err
    assert "not made by 'her2score demo'" in err
    assert len(err.strip().splitlines()) == 1
    assert precious.read_text() == "a user's own results\n"
    assert not (out / "cohort").exists()  # refused before generating anything


def test_fresh_run_folder_deletes_only_the_demos_own(tmp_path: Path) -> None:
    from her2score.cli.demo import RUN_MARKER, fresh_run_folder
    from her2score.errors import Her2ScoreError

    run = tmp_path / "run"
    fresh_run_folder(run)  # absent: created, marked
    assert (run / RUN_MARKER).is_file()
    (run / "model.safetensors").write_bytes(b"old")
    fresh_run_folder(run)  # the demo's own: emptied
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]

    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / RUN_MARKER).write_text("")
    (target / "keep.txt").write_text("x")
    link = tmp_path / "link-run"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(Her2ScoreError, match="not made by"):
        fresh_run_folder(link)  # a link is never followed into a deletion
    assert (target / "keep.txt").is_file()

    a_file = tmp_path / "file-run"
    a_file.write_text("x")
    with pytest.raises(Her2ScoreError, match="not made by"):
        fresh_run_folder(a_file)
    assert a_file.read_text() == "x"
