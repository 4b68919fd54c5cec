"""The shared training engine on a tiny cohort: resume to the same result, CV outputs, broken slides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from her2score.data.manifest import load_manifest
from her2score.engine.config import TrainConfig
from her2score.engine.train import train_run
from her2score.errors import ConfigError


class Interrupt(KeyboardInterrupt):
    pass


def _stop_after(epoch_to_stop: int):
    def callback(epoch: int, record: dict) -> None:
        if epoch == epoch_to_stop:
            raise Interrupt

    return callback


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_training_resumes_to_the_same_result(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path, ema: float
) -> None:
    fast_config.epochs, fast_config.ema = 3, ema
    cohort = load_manifest(tiny_manifest)
    full = train_run(cohort, fast_config, tmp_path / "full", quiet=True, log=lambda s: None)

    with pytest.raises(Interrupt):
        train_run(cohort, fast_config, tmp_path / "cut", quiet=True, on_epoch_end=_stop_after(0))
    assert (tmp_path / "cut" / "state.pt").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train_run(cohort, fast_config, tmp_path / "cut", quiet=True)
    resumed = train_run(cohort, fast_config, tmp_path / "cut", resume=True, quiet=True, log=lambda s: None)

    a = load_file(str(full.model_paths[0]))
    b = load_file(str(resumed.model_paths[0]))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert full.metrics["auc_macro"] == resumed.metrics["auc_macro"]
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    h_cut = pd.read_csv(tmp_path / "cut" / "history.csv")
    pd.testing.assert_frame_equal(h_full, h_cut)
    assert len(h_full) == 3


@pytest.mark.slow
def test_cross_validation_writes_per_fold_and_pooled_metrics_with_cis(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    fast_config.folds, fast_config.epochs = 3, 1
    run = tmp_path / "cv"
    train_run(load_manifest(tiny_manifest), fast_config, run, quiet=True, log=lambda s: None, heatmaps=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_folds"] == 3
    assert set(metrics["folds"]) == {"0", "1", "2"}
    pooled = metrics["pooled"]
    assert pooled["n"] == 12
    low, high = pooled["ci"]["accuracy"]
    assert low <= pooled["accuracy"] <= high
    assert "mean" in metrics["fold_summary"]["accuracy"]
    for k in range(3):
        assert (run / f"fold_{k}" / "model.safetensors").is_file()
        assert len(pd.read_csv(run / f"fold_{k}" / "predictions.csv")) == 4
    preds = pd.read_csv(run / "predictions.csv")
    assert sorted(preds["slide"]) == sorted(load_manifest(tiny_manifest).frame["slide"])  # each slide once
    assert "cross-validation" in (run / "report.html").read_text()


def test_broken_slide_is_skipped_and_listed(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "cohort"
    shutil.copytree(tiny_manifest.parent, folder)
    (folder / "slides" / "broken.tiff").write_bytes(b"II*\x00" + b"\x01" * 200)
    with (folder / "manifest.csv").open("a") as fh:
        fh.write("slides/broken.tiff,2+,neg,P999,site0\n")
    fast_config.epochs = 1
    messages: list[str] = []
    result = train_run(
        load_manifest(folder / "manifest.csv"), fast_config, tmp_path / "run", quiet=True,
        log=messages.append, heatmaps=1,
    )  # fmt: skip
    assert [Path(f.slide).name for f in result.failures] == ["broken.tiff"]
    assert any("skipped" in m for m in messages)
    skipped = pd.read_csv(tmp_path / "run" / "skipped_slides.csv")
    assert list(skipped["slide"].map(lambda s: Path(s).name)) == ["broken.tiff"]
    assert "broken.tiff" in (tmp_path / "run" / "report.html").read_text()
    assert len(list((tmp_path / "run" / "heatmaps").glob("*.png"))) == 1


@pytest.mark.slow
def test_ema_weights_are_the_ones_kept(tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path) -> None:
    """With ``ema``, the saved model is the moving average, not the last raw weights."""
    from her2score.engine.checkpoint import load_state

    fast_config.epochs, fast_config.ema, fast_config.val_fraction = 2, 0.5, 0.0  # no val: the last epoch
    result = train_run(
        load_manifest(tiny_manifest), fast_config, tmp_path / "ema", quiet=True, log=lambda s: None
    )
    saved = load_file(str(result.model_paths[0]))
    state = load_state(tmp_path / "ema" / "state.pt")
    raw, averaged = state["model"], state["ema"]
    name = next(k for k in saved if k.endswith("stem.0.weight"))
    assert (saved[name] == averaged[name]).all()
    assert not (saved[name] == raw[name]).all()


def test_ema_out_of_range_is_a_config_error() -> None:
    from her2score.engine.config import config_from_dict

    with pytest.raises(ConfigError, match="ema must be"):
        config_from_dict({"ema": 1.0})


def test_select_decides_which_epochs_weights_are_kept() -> None:
    from her2score.engine.config import config_from_dict
    from her2score.engine.train import _improved

    best = {"f1": 0.6, "loss": 0.8}
    better_f1_worse_loss = {"val_f1_macro": 0.7, "val_loss": 0.9}
    tie_f1_better_loss = {"val_f1_macro": 0.6, "val_loss": 0.7}
    assert _improved(better_f1_worse_loss, best, "f1")
    assert not _improved(better_f1_worse_loss, best, "loss")
    assert _improved(tie_f1_better_loss, best, "f1")
    assert _improved({"val_f1_macro": 0.1, "val_loss": 5.0}, best, "last")
    with pytest.raises(ConfigError, match="select must be"):
        config_from_dict({"select": "auc"})


@pytest.mark.slow
def test_training_on_windows_predicts_on_the_whole_input(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``augment.crop``: batches of 32-px windows in training, the whole 64-px input in evaluation."""
    import her2score.models.registry as registry

    sizes: dict[bool, set[int]] = {True: set(), False: set()}
    create = registry.create_model

    def spied(*args, **kwargs):
        model = create(*args, **kwargs)
        stem = next(model.backbone.children())  # every path into the CNN passes the stem
        stem.register_forward_hook(lambda m, inputs, out: sizes[m.training].add(inputs[0].shape[-1]))
        return model

    monkeypatch.setattr(registry, "create_model", spied)
    fast_config.epochs, fast_config.augment.crop = 1, 32
    train_run(load_manifest(tiny_manifest), fast_config, tmp_path / "crop", quiet=True, log=lambda s: None)
    assert sizes == {True: {32}, False: {64}}
    assert len(pd.read_csv(tmp_path / "crop" / "predictions.csv")) > 0


@pytest.mark.slow
def test_stain_head_is_fitted_saved_and_used_by_predict(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    """``stain_head``: fitted before training, frozen through it, saved, rebuilt from the checkpoint alone."""
    from her2score.engine.checkpoint import load_model
    from her2score.engine.predict import predict_slides

    fast_config.epochs, fast_config.stain_head = 2, True
    cohort = load_manifest(tiny_manifest)
    logs: list[str] = []
    result = train_run(cohort, fast_config, tmp_path / "run", quiet=True, log=logs.append)
    assert any("stain-statistics head fitted" in line for line in logs)
    model, meta = load_model(result.model_paths[0])
    assert meta["model_kwargs"]["stain_head"] is True
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    saved = load_file(str(result.model_paths[0]))
    assert (saved["stain_stats.linear.weight"] == state["model"]["stain_stats.linear.weight"]).all()
    assert saved["stain_stats.linear.weight"].abs().sum() > 0  # fitted, not left at zero
    assert model.stain_stats is not None
    frame, failures = predict_slides(
        result.model_paths[0],
        cohort.slides[:3],
        tmp_path / "preds.csv",
        heatmap_dir=tmp_path / "heat",
        quiet=True,
    )
    assert not failures
    assert len(frame) == 3
    assert len(list((tmp_path / "heat").glob("*.png"))) == 3  # Grad-CAM of the CNN, for the fused prediction
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-4


@pytest.mark.slow
def test_cross_validation_interrupted_in_a_later_fold_resumes_to_the_same_result(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    """Killed during fold 2 of 3, resumed: finished folds are not retrained, the pooled result is the
    uninterrupted one. Slides are read by 2 workers."""
    fast_config.folds, fast_config.epochs, fast_config.workers = 3, 2, 2
    cohort = load_manifest(tiny_manifest)
    full = train_run(cohort, fast_config, tmp_path / "full", quiet=True, log=lambda s: None, heatmaps=0)
    calls = {"n": 0}

    def stop_in_fold_2(epoch: int, record: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # fold 0: epochs 1-2, fold 1: epoch 1
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(cohort, fast_config, tmp_path / "cut", quiet=True, on_epoch_end=stop_in_fold_2, heatmaps=0)
    assert (tmp_path / "cut" / "fold_0" / "model.safetensors").is_file()
    assert not (tmp_path / "cut" / "fold_1" / "model.safetensors").exists()
    seen: list[int] = []
    resumed = train_run(
        cohort, fast_config, tmp_path / "cut", resume=True, quiet=True, log=lambda s: None, heatmaps=0,
        on_epoch_end=lambda epoch, record: seen.append(epoch),
    )  # fmt: skip
    assert seen == [1, 0, 1]  # fold 1's second epoch, then fold 2; fold 0 is not trained again
    assert resumed.metrics["pooled"] == full.metrics["pooled"]
    for k in range(3):
        a = load_file(str(tmp_path / "full" / f"fold_{k}" / "model.safetensors"))
        b = load_file(str(tmp_path / "cut" / f"fold_{k}" / "model.safetensors"))
        assert all((a[name] == b[name]).all() for name in a)
