"""What a training run may write into, and what it leaves after a failure or a divergence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from her2score.data.manifest import load_manifest
from her2score.engine.config import TrainConfig
from her2score.engine.train import DivergedError, train_run
from her2score.errors import ConfigError, Her2ScoreError


def _quiet(**kwargs):
    return {"quiet": True, "log": lambda s: None, "heatmaps": 0, **kwargs}


def test_resume_without_an_earlier_run_is_an_error_and_leaves_nothing(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_run(load_manifest(tiny_manifest), fast_config, tmp_path / "new", **_quiet(resume=True))
    assert not (tmp_path / "new").exists()


def test_a_folder_that_is_not_a_run_is_refused_unless_overwrite(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds no her2score training run.*--overwrite"):
        train_run(load_manifest(tiny_manifest), fast_config, evaluation, **_quiet())
    assert sorted(p.name for p in evaluation.iterdir()) == ["metrics.json"]  # untouched
    fast_config.epochs = 1
    train_run(load_manifest(tiny_manifest), fast_config, evaluation, **_quiet(overwrite=True))
    assert (evaluation / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match=r"already holds a training.*--overwrite"):
        train_run(load_manifest(tiny_manifest), fast_config, evaluation, **_quiet())


def test_a_failed_run_leaves_no_config_or_splits(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    frame = pd.read_csv(tiny_manifest)
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(len(frame)):
        (junk / f"s{i}.tiff").write_bytes(b"not a slide at all")
    frame["slide"] = [str(junk / f"s{i}.tiff") for i in range(len(frame))]
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(Her2ScoreError, match="readable slide"):
        train_run(load_manifest(bad), fast_config, tmp_path / "run", **_quiet())
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, empty
    with pytest.raises(Her2ScoreError):
        train_run(load_manifest(bad), fast_config, tmp_path / "kept", **_quiet())
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_loss_that_turns_non_finite_keeps_the_last_good_epoch_and_no_model(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"on": False}
    forward = torch.nn.CrossEntropyLoss.forward

    def nan_after_first_epoch(self, logits, target):
        loss = forward(self, logits, target)
        return loss * float("nan") if broken["on"] else loss

    def after_epoch(epoch: int, record: dict) -> None:
        broken["on"] = True

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_after_first_epoch)
    fast_config.epochs = 3
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"non-finite loss at epoch 2, step 1"):
        train_run(load_manifest(tiny_manifest), fast_config, run, **_quiet(on_epoch_end=after_epoch))
    assert (run / "state.pt").is_file()
    assert (run / "config.yaml").is_file()
    assert not (run / "model.safetensors").exists()
    assert not [p for p in run.rglob("*") if ".part" in p.name]


@pytest.mark.slow
def test_training_with_a_huge_learning_rate_ends_in_one_line_through_the_cli(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    config = tmp_path / "diverge.yaml"
    config.write_text(
        "input_size: 64\nbatch_size: 4\nbackbone: convnext_atto\nn_boot: 20\nwarmup_epochs: 0.5\n"
        f"epochs: 2\nlr: 1000000.0\ndevice: cpu\ncache_dir: {tmp_path / 'cache'}\n"
    )
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "her2score", "train", "--manifest", str(tiny_manifest), "--config",
         str(config), "--out", str(run), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "non-finite" in errors[0]
    assert not list(run.rglob("model.safetensors")) if run.exists() else True
    # no epoch finished well: nothing posing as a run is left; with one, state.pt would stay (above)
    assert not run.exists() or (run / "state.pt").is_file()
