"""Model choice by patient-grouped inner cross-validation, for cohorts too small for a validation split.

With a few dozen slides, a 20 % validation split is six or seven slides: the epoch it keeps and the
fusion weight it picks are noise. Here every training (and validation) slide serves once as inner
validation instead: K patient-grouped, stratified inner folds are trained with early stopping, the kept
epoch of each and the out-of-fold probabilities of the CNN and of the stain head are pooled, the epoch
count (median of the folds' kept epochs) and the fusion weight (least pooled out-of-fold log-loss) are
chosen on all of them, and one model is then trained on all the slides for that many epochs.
The test slides are never seen by any of it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2score.engine.config import INNER_CV_MAX_SLIDES, INNER_CV_MIN_SLIDES, TrainConfig


@dataclass
class InnerChoice:
    """What the inner cross-validation chose, and from what."""

    folds: int
    epochs: int
    fold_epochs: list[int]
    fusion_weight: float | None  # None: the model has no stain head to fuse with
    fusion_note: str = ""
    oof_auc: float | None = None  # macro AUC of the out-of-fold fused probabilities
    histories: list[list[dict[str, Any]]] = field(default_factory=list)

    def note(self, n_slides: int) -> str:
        """One line for the log, the report and the run's ``inner_cv.json``."""
        text = (
            f"model chosen by {self.folds}-fold patient-grouped inner cross-validation over the {n_slides} "
            f"training slides (no validation split): {self.epochs} epochs (median of the folds' best "
            f"{', '.join(map(str, self.fold_epochs))}), then one model trained on all {n_slides}"
        )
        if self.fusion_weight is not None:
            text += f"; fusion weight of the CNN {self.fusion_weight:g} on the pooled out-of-fold slides"
        if self.oof_auc is not None:
            text += f" (out-of-fold macro AUC {self.oof_auc:.3f})"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("histories")
        return out


def use_inner_cv(cfg: TrainConfig, n_train: int) -> bool:
    """Whether ``cfg.model_choice`` asks for inner cross-validation over ``n_train`` slides."""
    if cfg.model_choice == "inner-cv":
        return True
    return cfg.model_choice == "auto" and INNER_CV_MIN_SLIDES <= n_train < INNER_CV_MAX_SLIDES


def inner_folds(cohort: Any, pool: np.ndarray, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, stratified inner folds of ``pool`` (positions of ``cohort``), as positions of
    ``cohort``; fewer than ``cfg.inner_folds`` when the patients or the largest class are too few."""
    from her2score.data.manifest import kfold_splits
    from her2score.errors import ManifestError

    sub = cohort.subset(pool)
    k = min(cfg.inner_folds, len(set(sub.groups)), int(np.bincount(sub.y).max()))
    if k < 2:
        raise ManifestError(
            f"inner cross-validation needs 2 patients of one class among the {len(pool)} training slides",
            cohort.path,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: a class smaller than n_splits
        return [(pool[tr], pool[va]) for tr, va in kfold_splits(sub, k, cfg.seed + 4243)]


def best_epoch(history: list[dict[str, Any]], select: str) -> int:
    """The 1-based epoch ``fit`` kept under ``select`` (its early-stopping rule, replayed)."""
    from her2score.engine.train import _improved

    best: dict[str, Any] = {"f1": -1.0, "loss": math.inf}
    kept = len(history)
    for record in history:
        if "val_loss" not in record:
            continue
        if _improved(record, best, select):
            best = {"f1": record["val_f1_macro"], "loss": record["val_loss"]}
            kept = int(record["epoch"])
    return kept


def choose_by_inner_cv(
    cohort: Any,
    data: Any,
    pool: np.ndarray,
    cfg: TrainConfig,
    out_dir: Path,
    build: Callable[[int], Any],
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> InnerChoice:
    """Train one model per inner fold of ``pool`` (``build(fold)`` makes a fresh one) and choose the
    epoch count and fusion weight from all of them. Inner runs are written under ``out_dir/inner_K``."""
    import torch

    from her2score.engine.predictor import Predictor
    from her2score.engine.train import fit
    from her2score.models.base import FitContext
    from her2score.models.nets.lowres import choose_fusion_weight

    folds = inner_folds(cohort, pool, cfg)
    epochs, histories = [], []
    parts: list[tuple[Any, Any, Any]] = []
    oof_y, oof_fused = [], []
    for j, (train, val) in enumerate(folds):
        model = build(j)
        inner = out_dir / f"inner_{j}"
        inner.mkdir(parents=True, exist_ok=True)
        judged, history = fit(
            model, data, train, val, cfg, inner, resume=resume, quiet=quiet, fold_seed=101 + j,
            log=lambda s: None,
        )  # fmt: skip
        epochs.append(best_epoch(history, cfg.select))
        histories.append(history)
        device = next(judged.parameters()).device
        ctx = FitContext(data.kind, data.prepared, train, data.labels, data.stats, device, log, val=val)
        got = judged.fusion_parts(ctx) if hasattr(judged, "fusion_parts") else None
        if got is not None:
            parts.append(got)
        predictor = Predictor(judged, data.kind, data.stats, device, tta=False, num_classes=data.num_classes)
        oof_fused.append(predictor.predict(data.prepared, val))
        oof_y.append(data.labels[val])
        log(f"inner fold {j + 1}/{len(folds)}: {len(train)} training, {len(val)} validation slides, "
            f"best epoch {epochs[-1]}")  # fmt: skip
    weight, fusion_note, auc = None, "", None
    y = np.concatenate(oof_y)
    if parts:
        p_cnn = torch.cat([p[0] for p in parts])
        p_stain = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        weight, fusion_note = choose_fusion_weight(p_cnn, p_stain, labels)
        fused = (weight * p_cnn + (1 - weight) * p_stain).numpy()
        y = labels.numpy()
    else:
        fused = np.concatenate(oof_fused)
    auc = _macro_auc(y, fused, data.num_classes)
    chosen = max(1, int(np.median(epochs)))
    return InnerChoice(len(folds), chosen, epochs, weight, fusion_note, auc, histories)


def _macro_auc(y: np.ndarray, probs: np.ndarray, k: int) -> float | None:
    """One-vs-rest macro AUC over the classes present (None when fewer than two are)."""
    from sklearn.metrics import roc_auc_score

    present = [c for c in range(k) if (y == c).any()]
    if len(present) < 2:
        return None
    scores = [roc_auc_score(y == c, probs[:, c]) for c in present if (y != c).any()]
    return float(np.mean(scores)) if scores else None


def final_config(cfg: TrainConfig, choice: InnerChoice) -> TrainConfig:
    """The configuration of the model trained on all slides: the chosen epochs, no early stopping."""
    warmup = min(cfg.warmup_epochs, choice.epochs / 4)
    return dataclasses.replace(cfg, epochs=choice.epochs, patience=0, warmup_epochs=warmup)
