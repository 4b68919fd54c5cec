"""Inner cross-validation: epochs and fusion weight from pooled inner folds, then one model on all slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from her2score.data.manifest import load_manifest
from her2score.engine.config import TrainConfig
from her2score.engine.innercv import best_epoch, inner_folds, use_inner_cv
from her2score.engine.train import train_run


def test_auto_uses_inner_cv_for_small_cohorts_only() -> None:
    cfg = TrainConfig()
    assert use_inner_cv(cfg, 40)
    assert not use_inner_cv(cfg, 150)
    assert not use_inner_cv(cfg, 12)  # too few for inner folds: a validation split, as before
    cfg.model_choice = "validation"
    assert not use_inner_cv(cfg, 40)
    cfg.model_choice = "inner-cv"
    assert use_inner_cv(cfg, 500)


def test_best_epoch_replays_the_early_stopping_rule() -> None:
    history = [
        {"epoch": 1, "val_loss": 1.0, "val_f1_macro": 0.2},
        {"epoch": 2, "val_loss": 0.8, "val_f1_macro": 0.5},
        {"epoch": 3, "val_loss": 0.7, "val_f1_macro": 0.4},
    ]
    assert best_epoch(history, "f1") == 2
    assert best_epoch(history, "loss") == 3
    assert best_epoch([{"epoch": 1}, {"epoch": 2}], "f1") == 2  # no validation: the last epoch


def test_inner_folds_are_patient_grouped_and_cover_the_pool(tiny_manifest: Path) -> None:
    cohort = load_manifest(tiny_manifest)
    pool = np.arange(len(cohort))[2:]
    folds = inner_folds(cohort, pool, TrainConfig(inner_folds=3))
    assert len(folds) >= 2
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == pool.tolist()
    for train, val in folds:
        assert not set(cohort.groups[train]) & set(cohort.groups[val])


@pytest.mark.slow
def test_inner_cv_chooses_epochs_and_fusion_then_trains_on_all(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    fast_config.model_choice, fast_config.inner_folds, fast_config.stain_head = "inner-cv", 2, True
    fast_config.epochs, fast_config.model = 2, "lowres-resnet"
    fast_config.backbone = None
    logs: list[str] = []
    run = tmp_path / "run"
    cohort = load_manifest(tiny_manifest)
    result = train_run(cohort, fast_config, run, quiet=True, log=logs.append, heatmaps=0)
    choice = json.loads((run / "inner_cv.json").read_text())
    assert choice["folds"] == 2
    assert 1 <= choice["epochs"] <= 2
    assert choice["fusion_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert any("inner cross-validation" in line for line in logs)
    assert "model_choice used: inner-cv" in (run / "config.yaml").read_text()
    assert "inner cross-validation" in (run / "report.md").read_text()
    splits = __import__("pandas").read_csv(run / "splits.csv")
    n_fit = len(splits[(splits.fold == "main") & (splits.part != "test")])
    from her2score.engine.checkpoint import load_model

    model, meta = load_model(result.model_paths[0])
    assert meta["n_train"] == n_fit  # the final model saw every non-test slide
    assert float(model.fusion_weight) == choice["fusion_weight"]


def test_learning_curve_subsets_are_nested_stratified_and_grouped(tiny_manifest: Path) -> None:
    from her2score.engine.learning_curve import nested_subsets

    cohort = load_manifest(tiny_manifest)
    pool = np.arange(len(cohort))[:10]
    subsets = nested_subsets(cohort, pool, [4, 8], seed=0)
    assert set(subsets[4]) <= set(subsets[8]) <= set(pool)
    assert len(set(cohort.y[subsets[4]])) == len(set(cohort.y[pool]))  # every class present


@pytest.mark.slow
def test_learning_curve_trains_each_size_and_plots(
    tiny_manifest: Path, fast_config: TrainConfig, tmp_path: Path
) -> None:
    from her2score.engine.learning_curve import learning_curve

    fast_config.epochs, fast_config.test_fraction = 1, 0.34
    frame = learning_curve(load_manifest(tiny_manifest), fast_config, [4, 8], tmp_path / "lc", quiet=True,
                           log=lambda s: None)  # fmt: skip
    assert frame["n_train"].tolist() == sorted(frame["n_train"].tolist())
    assert len(frame) == 2
    assert frame["n_test"].nunique() == 1  # one held-out set for every size
    assert (tmp_path / "lc" / "learning_curve.png").stat().st_size > 1000
    assert frame["stain_auc_macro"].notna().all() or frame["prior_auc_macro"].notna().all()


def _probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_fusion_does_not_credit_a_cnn_that_only_softens_an_overconfident_stain_head() -> None:
    from her2score.models.nets.lowres import choose_fusion_weight

    y = torch.tensor([0, 1, 2, 3] * 4)
    # an overconfident stain head: right on 12 of 16 slides, wrong with 0.94 on the other 4
    stain = [
        [0.94 if c == (k if i % 4 else (k + 1) % 4) else 0.02 for c in range(4)] for i, k in enumerate(y)
    ]
    noise = np.random.default_rng(0).normal(0, 0.01, (16, 4))
    near_uniform = np.abs(0.25 + noise) / np.abs(0.25 + noise).sum(1, keepdims=True)
    weight, note = choose_fusion_weight(_probs(near_uniform.tolist()), _probs(stain), y)
    assert weight == 0.0  # log-loss alone would have kept a share of the near-uniform CNN
    assert "class prior" in note
    # a CNN that is right where the stain head is wrong earns its share
    good = [[0.7 if c == k else 0.1 for c in range(4)] for k in y.tolist()]
    weight, _ = choose_fusion_weight(_probs(good), _probs(stain), y)
    assert weight > 0.0
