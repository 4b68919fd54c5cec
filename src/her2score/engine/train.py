"""The training loop shared by every model: splits, fitting with early stopping, checkpoints, resume, CV.

Reproducibility: every epoch reseeds its own generators from (seed, fold, epoch), so an interrupted
run resumed from its last checkpoint takes exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.data.lowres import Failure, LowResParams
from her2score.data.manifest import Cohort, fixed_splits, has_fixed_splits, holdout_split, kfold_splits
from her2score.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from her2score.engine.config import TrainConfig, save_config
from her2score.errors import ConfigError, ManifestError

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class Split:
    """Positions (into the readable cohort) for training, validation (early stopping) and test."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class RunResult:
    """What a training run produced."""

    run_dir: Path
    metrics: dict[str, Any] | None
    failures: list[Failure] = field(default_factory=list)
    model_paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- splitting
def _carve_val(
    cohort: Cohort, train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0 or len(set(cohort.groups[train])) < 4:
        return train, np.array([], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: a class smaller than n_splits
        tr, va = holdout_split(cohort.subset(train), fraction, seed)
    return train[tr], train[va]


def make_splits(cohort: Cohort, cfg: TrainConfig) -> list[Split]:
    """k-fold CV (``cfg.folds``), the manifest's own ``split`` column, or a seeded patient-grouped holdout."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if cfg.folds:
            out = []
            for k, (train, test) in enumerate(kfold_splits(cohort, cfg.folds, cfg.seed)):
                tr, va = _carve_val(cohort, train, cfg.val_fraction, cfg.seed + k + 1)
                out.append(Split(f"fold_{k}", tr, va, test))
            return out
        if has_fixed_splits(cohort):
            parts = fixed_splits(cohort)
            train, val = parts["train"], parts["val"]
            if not len(train):
                raise ManifestError("the 'split' column names no train slides", cohort.path)
            if not len(val):
                train, val = _carve_val(cohort, train, cfg.val_fraction, cfg.seed + 1)
            return [Split("main", train, val, parts["test"])]
        train, test = holdout_split(cohort, cfg.test_fraction, cfg.seed)
        tr, va = _carve_val(cohort, train, cfg.val_fraction, cfg.seed + 1)
        return [Split("main", tr, va, test)]


# ------------------------------------------------------------------------------------------- fitting
def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return factor


def _macro_f1(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, probs.argmax(1), labels=list(range(k)), average="macro", zero_division=0))


def input_statistics(images: Any, train: np.ndarray, pretrained: bool) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std that normalise the model input.

    With pretrained weights, the statistics they were trained with (ImageNet). From scratch, those of
    the training images: low-resolution slides are mostly white glass, and centring them on ImageNet's
    mean leaves the faint stain differences that carry the label too small to learn from.
    """
    if pretrained or len(train) == 0:
        return IMAGENET_MEAN, IMAGENET_STD
    x = images[train].float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def model_metadata(cfg: TrainConfig, cohort: Cohort, input_kind: str, model: Any) -> dict[str, Any]:
    """Everything ``predict`` needs to rebuild the model and its input from the checkpoint alone."""
    backbone = getattr(model, "backbone_name", cfg.backbone)
    return {
        "task": cohort.task.name,
        "classes": cohort.classes,
        "ordinal": cohort.task.ordinal,
        "equivocal": cfg.equivocal,
        "model": cfg.model,
        "model_kwargs": {
            "backbone": backbone,
            "drop_rate": cfg.drop_rate,
            "norm": getattr(model, "norm", None),
            **({"stain_head": True} if getattr(model, "stain_stats", None) is not None else {}),
        },
        "backbone": backbone,
        "input_kind": input_kind,
        "input_size": cfg.input_size,
        "mpp": cfg.mpp,
        "margin": cfg.margin,
        "tta": cfg.tta,
        "mean": list(getattr(model, "input_mean", IMAGENET_MEAN)),
        "std": list(getattr(model, "input_std", IMAGENET_STD)),
        "normalisation": getattr(model, "input_normalisation", "ImageNet mean/std on RGB in [0, 1]"),
        "weights_origin": getattr(model, "weights_note", "unknown"),
    }


def fit(
    images: Any,
    labels: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    cfg: TrainConfig,
    num_classes: int,
    out_dir: Path,
    resume: bool = False,
    quiet: bool = False,
    fold_seed: int = 0,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train one model on ``images[train]``; keeps and early-stops on ``cfg.select`` over ``images[val]``.

    Saves ``state.pt`` after every epoch (model, optimiser, schedule, best weights, history) and,
    with ``resume``, continues from it. Returns the model holding its best weights, and the history.
    """
    import torch

    from her2score.engine.checkpoint import load_state, save_state
    from her2score.engine.data import epoch_order, to_model_input
    from her2score.engine.evaluate import predict_probs, resolve_device
    from her2score.models.registry import create_model
    from her2score.progress import progress_bar

    if len(train) < 2:
        raise ConfigError(f"{out_dir.name}: only {len(train)} training slide(s); a batch needs at least 2")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed + 7919 * fold_seed)
    model = create_model(
        cfg.model, num_classes, backbone=cfg.backbone, weights=cfg.weights, drop_rate=cfg.drop_rate,
        norm=cfg.norm, **({"stain_head": True} if cfg.stain_head else {}),
    ).to(device)  # fmt: skip
    log(f"{cfg.model} ({getattr(model, 'backbone_name', cfg.backbone)}) on {device}: {model.weights_note}")
    mean, std = input_statistics(images, train, pretrained=bool(cfg.weights))
    model.input_mean, model.input_std = mean, std
    model.input_normalisation = (
        "ImageNet mean/std on RGB in [0, 1]" if cfg.weights else "training-image mean/std on RGB in [0, 1]"
    )
    norm = {"mean": mean, "std": std, "classes": list(range(num_classes))}
    if getattr(model, "stain_stats", None) is not None:
        accuracy = model.stain_stats.fit(images[train], labels[train], mean, std)
        log(f"stain-statistics head fitted on {len(train)} slides (accuracy {accuracy:.2f})")
    y_train, y_val = labels[train], labels[val]
    steps = math.ceil(len(train) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps, round(cfg.warmup_epochs * steps))
    )
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float64)
    class_weight = None
    if cfg.balance == "weighted-loss":
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
        class_weight = torch.as_tensor(w, dtype=torch.float32, device=device)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weight, label_smoothing=cfg.label_smoothing)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # With ``ema``, an exponential moving average of the weights is what gets validated, kept and saved:
    # a few hundred small-batch steps on a few dozen slides leave the raw weights noisy.
    ema = _ema_copy(model) if cfg.ema > 0 else None
    judged = ema if ema is not None else model
    history: list[dict[str, Any]] = []
    best = {"f1": -1.0, "loss": math.inf, "epoch": -1, "weights": None}
    bad_epochs, start = 0, 0
    state_path = out_dir / STATE_FILE
    if resume and state_path.is_file():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, bad_epochs, start = state["history"], state["bad_epochs"], state["epoch"] + 1
        best = {"f1": state["best_f1"], "loss": state["best_loss"], "epoch": state["best_epoch"]}
        best["weights"] = state["best_weights"]
        if state.get("finished"):
            start = cfg.epochs
        log(f"resuming {out_dir.name} after epoch {state['epoch'] + 1}")

    with progress_bar(quiet) as bar:
        task = bar.add_task(f"{out_dir.name}: training", total=cfg.epochs * steps, completed=start * steps)
        for epoch in range(start, cfg.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + fold_seed * 10_007 + epoch)
            torch.manual_seed(cfg.seed * 1_000_003 + fold_seed * 10_007 + epoch)  # dropout, drop-path
            model.train()
            order = np.array(list(epoch_order(y_train, gen, cfg.balance == "sampler", num_classes)))
            total_loss = 0.0
            # equal-sized batches: a last batch of one image would break BatchNorm and weigh one slide alone
            for b, chunk in enumerate(np.array_split(order, steps)):
                idx = train[chunk]
                x = to_model_input(images[idx], mean, std, device, cfg.augment, gen)
                target = torch.as_tensor(labels[idx], device=device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model.trainable_logits(x) if hasattr(model, "trainable_logits") else model(x)
                    loss = criterion(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    _ema_update(ema, model, cfg.ema, epoch * steps + b)
                total_loss += float(loss.detach()) * len(idx)
                bar.update(task, advance=1, description=f"{out_dir.name} epoch {epoch + 1}/{cfg.epochs}")
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": total_loss / len(train),
                "lr": scheduler.get_last_lr()[0],
            }
            if len(val):
                probs = predict_probs(judged, images[val], norm, device)
                record["val_loss"] = float(
                    torch.nn.functional.nll_loss(
                        torch.log(torch.as_tensor(probs).clamp_min(1e-8)), torch.as_tensor(y_val)
                    )
                )
                record["val_f1_macro"] = _macro_f1(y_val, probs, num_classes)
                record["val_accuracy"] = float((probs.argmax(1) == y_val).mean())
                improved = _improved(record, best, cfg.select)
            else:
                improved = True  # no validation set: keep the last epoch
            if improved:
                best = {
                    "f1": record.get("val_f1_macro", 0.0),
                    "loss": record.get("val_loss", 0.0),
                    "epoch": epoch,
                    "weights": {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()},
                }
                bad_epochs = 0
            else:
                bad_epochs += 1
            history.append(record)
            stop = cfg.patience > 0 and bad_epochs >= cfg.patience
            save_state(
                state_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "bad_epochs": bad_epochs,
                    "best_f1": best["f1"],
                    "best_loss": best["loss"],
                    "best_epoch": best["epoch"],
                    "best_weights": best["weights"],
                    "finished": stop or epoch + 1 == cfg.epochs,
                },
            )
            shown = f"loss {record['train_loss']:.3f}"
            if "val_f1_macro" in record:
                shown += f" · val F1 {record['val_f1_macro']:.3f} · val loss {record['val_loss']:.3f}"
            bar.update(task, description=f"{out_dir.name} epoch {epoch + 1}/{cfg.epochs} {shown}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if stop:
                log(f"{out_dir.name}: early stop after epoch {epoch + 1} (best epoch {best['epoch'] + 1})")
                break
    if best["weights"] is not None:
        judged.load_state_dict(best["weights"])
    for p in judged.parameters():
        p.requires_grad_(True)  # an EMA copy was frozen; Grad-CAM needs gradients
    return judged.eval(), history


def _improved(record: dict[str, Any], best: dict[str, Any], select: str) -> bool:
    """Whether this epoch's weights replace the kept ones: by validation macro-F1 (ties: lower loss),
    by validation loss (smoother than F1 on a few dozen slides), or always (``last``)."""
    if select == "last":
        return True
    if select == "loss":
        return record["val_loss"] < best["loss"]
    f1, best_f1 = record["val_f1_macro"], best["f1"]
    return f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and record["val_loss"] < best["loss"])


def _ema_copy(model: Any) -> Any:
    """A frozen copy of ``model`` (with its input statistics) that will hold the moving average."""
    import copy

    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _ema_update(ema: Any, model: Any, decay: float, step: int) -> None:
    """ema = d * ema + (1 - d) * model; d ramps up over the first steps (the start is random weights)."""
    import torch

    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)  # counters (BatchNorm's num_batches_tracked)


# ------------------------------------------------------------------------------------------- a run
def train_run(
    cohort: Cohort,
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    heatmaps: int = 6,
) -> RunResult:
    """Prepare inputs, split, train (one model or one per fold), evaluate held-out slides, report."""
    from her2score.engine.checkpoint import save_model
    from her2score.engine.data import build_inputs
    from her2score.engine.evaluate import gradcam_figures, predict_probs, prediction_frame, write_evaluation
    from her2score.io import write_csv
    from her2score.models.registry import get_model_spec
    from her2score.report.plots import plot_training_curves

    cfg.validate()
    spec = get_model_spec(cfg.model)
    if cohort.task.name not in spec.tasks:
        raise ConfigError(f"model {cfg.model} does not support task {cohort.task.name}")
    run = Path(run_dir)
    _check_run_dir(run, cfg, resume)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")

    params = LowResParams(cfg.mpp, cfg.input_size, cfg.margin)
    inputs = build_inputs(
        spec.input_kind, cohort.slides, params, cfg.resolved_cache_dir(), list(cohort.frame["mpp"]),
        cfg.workers, quiet,
    )  # fmt: skip
    if inputs.failures:
        write_csv(run / "skipped_slides.csv", pd.DataFrame([f.__dict__ for f in inputs.failures]))
        log(f"{len(inputs.failures)} slide(s) cannot be used and are skipped (see skipped_slides.csv)")
    readable = cohort.subset(inputs.positions)
    if len(readable) < 4:
        raise ManifestError(f"only {len(readable)} readable slide(s); training needs at least 4", cohort.path)
    labels = readable.y
    splits = make_splits(readable, cfg)
    write_csv(run / "splits.csv", _splits_frame(readable, splits))

    result = RunResult(run, None, inputs.failures)
    fold_frames = []
    for k, split in enumerate(splits):
        out = run if split.name == "main" else run / split.name
        out.mkdir(parents=True, exist_ok=True)
        model, history = fit(
            inputs.images, labels, split.train, split.val, cfg, len(readable.classes), out,
            resume=resume, quiet=quiet, fold_seed=k, on_epoch_end=on_epoch_end, log=log,
        )  # fmt: skip
        meta = model_metadata(cfg, readable, spec.input_kind, model)
        meta.update({"fold": split.name, "epochs_trained": len(history), "n_train": len(split.train)})
        result.model_paths.append(save_model(out / MODEL_FILE, model, meta))
        write_csv(out / "history.csv", pd.DataFrame(history))
        plot_training_curves(history, out / "training_curves.png", title=f"{cfg.model} {split.name}")
        if not len(split.test):
            result.notes.append(f"{split.name}: no test slides, so no held-out metrics")
            continue
        rows = readable.frame.iloc[split.test]
        device = next(model.parameters()).device
        probs = predict_probs(model, inputs.images[split.test], meta, device)
        frame = prediction_frame(
            list(rows["slide"]), probs, readable.classes,
            {"patient": list(rows["patient"]), "site": list(rows["site"]), "y_true": list(rows["label_name"]),
             "fold": k},
        )  # fmt: skip
        fold_frames.append(frame)
        if split.name != "main":
            write_csv(out / "predictions.csv", frame)
            continue
        figures = [("Training curves", out / "training_curves.png")]
        figures += gradcam_figures(
            model, inputs.images[split.test], list(rows["slide"]), meta, device, out / "heatmaps", heatmaps
        )
        result.metrics = write_evaluation(
            out, frame, readable.classes, f"{cfg.model} · {cohort.task.name} · held-out test slides",
            ordinal=cohort.task.ordinal, n_boot=cfg.n_boot, seed=cfg.seed, failures=inputs.failures,
            figures=figures, notes=[meta["weights_origin"], cohort.task.description],
        )  # fmt: skip
    if cfg.folds and fold_frames:
        pooled = pd.concat(fold_frames, ignore_index=True)
        figures = [(f"Training curves {s.name}", run / s.name / "training_curves.png") for s in splits]
        result.metrics = write_evaluation(
            run, pooled, readable.classes, f"{cfg.model} · {cohort.task.name} · {cfg.folds}-fold CV",
            ordinal=cohort.task.ordinal, n_boot=cfg.n_boot, seed=cfg.seed, failures=inputs.failures,
            figures=figures, notes=[cohort.task.description], folds=True,
        )  # fmt: skip
    return result


def _check_run_dir(run: Path, cfg: TrainConfig, resume: bool) -> None:
    import yaml

    saved = run / "config.yaml"
    if not resume:
        if any(run.glob(f"**/{STATE_FILE}")):
            raise ConfigError(
                "run folder already holds a training; pass --resume or choose another --out", run
            )
        return
    if not saved.is_file():
        return  # nothing to resume: a fresh start
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    new = cfg.to_dict()
    ignore = {"device", "workers", "cache_dir", "amp", "tta", "n_boot"}
    changed = sorted(k for k in new if k not in ignore and old.get(k) != new[k])
    if changed:
        raise ConfigError(f"--resume with a different configuration ({', '.join(changed)} changed)", run)


def _splits_frame(cohort: Cohort, splits: list[Split]) -> pd.DataFrame:
    rows = []
    for split in splits:
        for part in ("train", "val", "test"):
            for i in getattr(split, part):
                rows.append({"fold": split.name, "part": part, "slide": cohort.frame["slide"].iloc[i]})
    return pd.DataFrame(rows)
