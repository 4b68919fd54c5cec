"""evaluate flags slides in the wrong stain (metrics with and without them) and one-class manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from her2score.data.manifest import load_manifest
from her2score.engine import predict
from her2score.engine.config import TrainConfig
from her2score.engine.evaluate import evaluate_model
from her2score.engine.train import train_run


@pytest.fixture(scope="module")
def model(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from her2score.engine.config import load_config

    folder = tmp_path_factory.mktemp("flags")
    cfg: TrainConfig = load_config(
        None, epochs=1, input_size=64, batch_size=4, n_boot=10, cache_dir=str(folder / "cache"),
        backbone="convnext_atto", device="cpu", warmup_epochs=0.5,
    )  # fmt: skip
    result = train_run(
        load_manifest(tiny_manifest), cfg, folder / "run", quiet=True, log=lambda s: None, heatmaps=0
    )
    return result.model_paths[0]


def test_slides_in_the_wrong_stain_are_flagged_and_left_out_of_a_second_set_of_metrics(
    model: Path, tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = predict.stain_status
    seen = []

    def he_for_case_000(picture, expected="ihc"):  # as if case_000 were an H&E slide
        seen.append(real(picture, expected))
        return "warning: looks like H&E, not IHC" if len(seen) == 1 else seen[-1]

    monkeypatch.setattr(predict, "stain_status", he_for_case_000)
    logs: list[str] = []
    _metrics, _ = evaluate_model(model, tiny_manifest, tmp_path / "eval", quiet=True, n_boot=10, heatmaps=0,
                                log=logs.append)  # fmt: skip
    frame = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert frame["status"].iloc[0].startswith("warning: looks like H&E")
    assert (frame["status"].iloc[1:] == "ok").all()  # the real check passes the tiny IHC-like slides
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["n"] == 12
    assert saved["n_flagged"] == 1
    assert saved["excluding_flagged"]["n"] == 11
    assert any("case_000.tiff" in line and "excluding_flagged" in line for line in logs)
    assert "without the slides flagged" in (tmp_path / "eval" / "report.html").read_text().lower()


def test_a_one_class_manifest_is_warned_about(model: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_manifest)
    frame = frame[frame["her2"] == "3+"].copy()
    frame["slide"] = [str(tiny_manifest.parent / s) for s in frame["slide"]]
    one = tmp_path / "one.csv"
    frame.to_csv(one, index=False)
    logs: list[str] = []
    evaluate_model(model, one, tmp_path / "eval", quiet=True, n_boot=10, heatmaps=0, log=logs.append)
    assert any("one class" in line and "one.csv" in line for line in logs)
    assert not (tmp_path / "eval" / ".her2score.lock").exists()
