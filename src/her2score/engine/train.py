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

from her2score.data.lowres import Failure
from her2score.data.manifest import Cohort, fixed_splits, has_fixed_splits, holdout_split, kfold_splits
from her2score.engine.config import SHARED_MODEL_KEYS, TrainConfig, save_config
from her2score.engine.innercv import InnerChoice, choose_by_inner_cv, final_config, use_inner_cv
from her2score.errors import ConfigError, ManifestError

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
EpochCallback = Callable[[int, dict[str, Any]], None]
#: Splits of a readable cohort (a function, since which slides are readable depends on the input kind).
SplitRule = Callable[["Cohort"], list["Split"]]


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
    warnings: list[str] = field(default_factory=list)  # the run learned nothing, or less than a baseline


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
def _macro_f1(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, probs.argmax(1), labels=list(range(k)), average="macro", zero_division=0))


class DivergedError(ConfigError):
    """Training produced a non-finite loss."""


@dataclass
class FitData:
    """A prepared cohort as the loop sees it: the input kind, its inputs, labels and normalisation."""

    kind: Any
    prepared: Any
    labels: np.ndarray
    stats: dict[str, Any]
    num_classes: int


def _loss_fn(cfg: TrainConfig, labels: np.ndarray, num_classes: int, device: Any) -> Any:
    """Cross-entropy, class-weighted when ``balance`` is ``weighted-loss``, with label smoothing."""
    import torch

    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weight = None
    if cfg.balance == "weighted-loss":
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
        weight = torch.as_tensor(w, dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def _scheduler(optimizer: Any, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """timm's cosine schedule, stepped per update, after a linear warm-up of ``warmup_epochs``."""
    from timm.scheduler import CosineLRScheduler

    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, total - warmup), lr_min=0.0, warmup_t=warmup,
        warmup_lr_init=cfg.lr / max(1, warmup), warmup_prefix=True, t_in_epochs=False,
    )  # fmt: skip


def _ema(model: Any, decay: float) -> Any:
    """timm's model EMA; the warm-up makes the decay (1 + s) / (10 + s) at step s (see ``_ema_step``):
    the start is random weights, which a long memory would keep."""
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_gamma=9.0, warmup_power=1.0)
    for p in ema.module.parameters():
        p.requires_grad_(False)
    return ema


def _ema_step(step: int) -> int:
    """timm counts a warm-up step t = step - 1 and gives decay 1 - 9 / (9 + t): step s + 2 -> (1+s)/(10+s)."""
    return step + 2


def fit(
    model: Any,
    data: FitData,
    train: np.ndarray,
    val: np.ndarray,
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    quiet: bool = False,
    fold_seed: int = 0,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train ``model`` on rows ``train`` of ``data``; keep and early-stop on ``cfg.select`` over ``val``.

    The same loop serves every model: batches come from the input kind, the loss from the model's
    ``training_step``, validation from the shared :class:`Predictor`. Saves ``state.pt`` after every
    epoch (model, EMA, optimiser, schedule, best weights, history) and, with ``resume``, continues from
    it. A non-finite loss stops training with :class:`DivergedError` naming the epoch and step; the
    last good state stays on disk. Returns the kept model (the EMA when on) and the history.
    """
    import torch

    from her2score.engine import distributed as ddp
    from her2score.engine.checkpoint import load_state, save_state
    from her2score.engine.predictor import Predictor
    from her2score.models.base import FitContext
    from her2score.progress import progress_bar

    if len(train) < 2:
        raise ConfigError(f"{out_dir.name}: only {len(train)} training slide(s); a batch needs at least 2")
    device = next(model.parameters()).device
    num_classes = data.num_classes
    y_train = data.labels[train]
    steps = math.ceil(len(train) / cfg.batch_size)
    state_path = out_dir / STATE_FILE
    ddp.check_batch(cfg.batch_size)
    # under torchrun, rank 0 (the one that writes) decides and hands its state to the others
    resuming = ddp.broadcast_object(resume and state_path.is_file())
    if not resuming:
        note = model.on_fit_start(
            FitContext(data.kind, data.prepared, train, data.labels, data.stats, device, log)
        )
        if note:
            log(note)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = _scheduler(optimizer, cfg, steps)
    criterion = _loss_fn(cfg, y_train, num_classes, device)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # With ``ema``, an exponential moving average of the weights is what gets validated, kept and saved:
    # a few hundred small-batch steps on a few dozen slides leave the raw weights noisy.
    ema = _ema(model, cfg.ema) if cfg.ema > 0 else None
    judged = ema.module if ema is not None else model
    predictor = Predictor(judged, data.kind, data.stats, device, tta=False, num_classes=data.num_classes)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"f1": -1.0, "loss": math.inf, "epoch": -1, "weights": None}
    bad_epochs, start = 0, 0
    if resuming:
        state = ddp.broadcast_object(load_state(state_path) if ddp.is_main() else None)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, bad_epochs, start = state["history"], state["bad_epochs"], state["epoch"] + 1
        best = {"f1": state["best_f1"], "loss": state["best_loss"], "epoch": state["best_epoch"]}
        best["weights"] = state["best_weights"]
        if state.get("finished"):
            start = cfg.epochs
        log(f"resuming {out_dir.name} after epoch {state['epoch'] + 1}")
    ranks, seed = ddp.world_size(), cfg.seed * 1_000_003 + fold_seed * 10_007
    sampler = ddp.epoch_sampler(y_train, cfg.balance == "sampler", num_classes, seed) if ranks > 1 else None
    step_fn = ddp.wrap_for_training(model, device) if ranks > 1 else model.training_step

    with progress_bar(quiet) as bar:
        task = bar.add_task(f"{out_dir.name}: training", total=cfg.epochs * steps, completed=start * steps)
        for epoch in range(start, cfg.epochs):
            own = 7_919 * ddp.rank()  # each rank its own augmentation and dropout draws
            gen = torch.Generator().manual_seed(seed + epoch + own)
            torch.manual_seed(seed + epoch + own)  # dropout, drop-path
            model.train()
            if sampler is not None:
                sampler.set_epoch(epoch)  # this rank's share of the epoch's order
                order = np.array(list(sampler))
            else:
                order = np.array(list(epoch_order(y_train, gen, cfg.balance == "sampler", num_classes)))
            total_loss, logs_sum, seen = 0.0, {}, 0
            # equal-sized batches: a last batch of one image would break BatchNorm and weigh one slide alone
            for b, chunk in enumerate(np.array_split(order, steps)):
                idx = train[chunk]
                batch = data.kind.batch(data.prepared, idx, data.stats, device, cfg.augment, gen)
                batch["label"] = torch.as_tensor(data.labels[idx], device=device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logs = step_fn(batch, criterion)
                if ddp.any_rank(not bool(torch.isfinite(loss)), device):  # all ranks stop together
                    raise _diverged(
                        f"non-finite loss at epoch {epoch + 1}, step {b + 1}", cfg, epoch, out_dir
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step = epoch * steps + b
                scheduler.step_update(num_updates=global_step + 1)
                if ema is not None:
                    ema.update(model, step=_ema_step(global_step))
                total_loss += float(loss.detach()) * len(idx)
                seen += len(idx)
                for k, v in logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * len(idx)
                bar.update(task, advance=1, description=f"{out_dir.name} epoch {epoch + 1}/{cfg.epochs}")
            keys = sorted(logs_sum)
            total_loss, seen, *sums = ddp.sum_over_ranks(
                [total_loss, seen, *(logs_sum[k] for k in keys)], device
            )
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": total_loss / seen,
                **{f"train_{k}": v / seen for k, v in zip(keys, sums, strict=True)},
                "lr": optimizer.param_groups[0]["lr"],
            }
            if len(val):
                # validated on rank 0; its record (so the kept epoch and early stopping) goes to every rank
                record = ddp.broadcast_object(
                    _validate(predictor, data, val, record) if ddp.is_main() else None
                )
                if "diverged" in record:
                    raise _diverged(record["diverged"], cfg, epoch, out_dir)
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
            if ddp.is_main():
                save_state(
                    state_path,
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        **({"ema": ema.module.state_dict()} if ema is not None else {}),
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
    ctx = FitContext(data.kind, data.prepared, train, data.labels, data.stats, device, log, val=val)
    note = judged.on_fit_end(ctx)
    if note:
        log(note)
    return judged.eval(), history


def _validate(predictor: Any, data: FitData, val: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the validation loss, macro-F1 and accuracy, or with ``diverged`` saying why not."""
    import torch

    from her2score.engine.predictor import NonFiniteError

    y_val = data.labels[val]
    try:
        probs = predictor.predict(data.prepared, val)
    except NonFiniteError:
        return {**record, "diverged": f"non-finite validation probabilities after epoch {record['epoch']}"}
    log_probs = torch.log(torch.as_tensor(probs).clamp_min(1e-8))
    return {
        **record,
        "val_loss": float(torch.nn.functional.nll_loss(log_probs, torch.as_tensor(y_val))),
        "val_f1_macro": _macro_f1(y_val, probs, data.num_classes),
        "val_accuracy": float((probs.argmax(1) == y_val).mean()),
    }


def _diverged(what: str, cfg: TrainConfig, epoch: int, out_dir: Path) -> DivergedError:
    kept = f"epoch {epoch} is kept in {STATE_FILE}" if epoch > 0 else "no epoch finished, nothing is kept"
    return DivergedError(f"training diverged: {what}; lower lr (now {cfg.lr:g}); {kept}", out_dir)


def epoch_order(labels: np.ndarray, generator: Any, balanced: bool, num_classes: int) -> Any:
    """Sample order for one epoch: a shuffle, or class-balanced draws with replacement."""
    import torch

    n = len(labels)
    if not balanced:
        return iter(torch.randperm(n, generator=generator).tolist())
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = 1.0 / np.maximum(counts[labels], 1)
    draws = torch.multinomial(torch.as_tensor(weights), n, replacement=True, generator=generator)
    return iter(draws.tolist())


def _improved(record: dict[str, Any], best: dict[str, Any], select: str) -> bool:
    """Whether this epoch's weights replace the kept ones: by validation macro-F1 (ties: lower loss),
    by validation loss (smoother than F1 on a few dozen slides), or always (``last``)."""
    if select == "last":
        return True
    if select == "loss":
        return record["val_loss"] < best["loss"]
    f1, best_f1 = record["val_f1_macro"], best["f1"]
    return f1 > best_f1 + 1e-9 or (abs(f1 - best_f1) <= 1e-9 and record["val_loss"] < best["loss"])


# ------------------------------------------------------------------------------------------- a run
def model_options(cfg: TrainConfig, spec: Any) -> dict[str, Any]:
    """The model's constructor options from the config: the shared keys the factory takes (backbone,
    weights, norm, drop_rate, stain_head) and ``model_args``; a shared key set for a model that does
    not take it, or an unknown ``model_args`` key, is a ``ConfigError``."""
    from her2score.models.registry import check_model_options

    known = spec.options()
    defaults = TrainConfig()
    options: dict[str, Any] = {}
    for key in SHARED_MODEL_KEYS:
        value = getattr(cfg, key)
        if key in known:
            options[key] = value
        elif value != getattr(defaults, key):
            raise ConfigError(
                f"model {spec.name} has no option '{key}' (its options: {', '.join(sorted(known)) or 'none'})"
            )
    options.update(cfg.model_args)
    return check_model_options(spec.name, options)


def checkpoint_metadata(
    cfg: TrainConfig, cohort: Cohort, data: FitData, module: Any, note: str
) -> dict[str, Any]:
    """Everything ``predict`` needs to rebuild the saved (inference) module and its input."""
    kind, data_config, stats = data.kind.inference_config(data.stats)
    return {
        "task": cohort.task.name,
        "classes": cohort.classes,
        "ordinal": cohort.task.ordinal,
        "equivocal": cfg.equivocal,
        "model": module.registry_name,
        "model_kwargs": module.build_kwargs(),
        "trained_as": cfg.model,
        "backbone": getattr(module, "backbone_name", None),
        "input_kind": kind,
        "input_stain": data.kind.inference_stain,
        "data": data_config,
        "stats": stats,
        "tta": cfg.tta,
        "weights_origin": note,
    }


def train_run(
    cohort: Cohort,
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    heatmaps: int = 6,
    overwrite: bool = False,
    splits: SplitRule | None = None,
) -> RunResult:
    """Prepare inputs, split, train (one model or one per fold), evaluate held-out slides, report.

    Any registered model goes through here: its spec names the input kind to prepare, the config its
    options; training, checkpoints, evaluation and reports are the same for all.

    ``run_dir`` is held for the run (:func:`her2score.io.output_lock`); it must be empty or new, or a
    run of ours to continue (``resume``) or replace (``overwrite``, which also writes into a non-empty
    folder that is not a run). A run that fails before its first epoch is saved removes what it wrote
    (no ``config.yaml`` or ``splits.csv`` posing as a run); once an epoch is saved, what it wrote stays
    so that ``--resume`` can continue it.

    ``splits``, when given, makes the splits of the readable cohort instead of :func:`make_splits`
    (``her2score compare`` hands every method the same patient-grouped splits this way).
    """
    from her2score.io import output_lock

    run = Path(run_dir)
    existed = run.exists()
    before = _listing(run)
    try:
        with output_lock(run):
            _check_run_dir(run, cfg, resume, overwrite)
            _warn_one_class(cohort, log)
            return _train_run(cohort, cfg, run, resume, quiet, on_epoch_end, log, heatmaps, splits)
    except BaseException:
        _remove_partial_run(run, existed, before)
        raise


def _train_run(
    cohort: Cohort,
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    heatmaps: int = 6,
    split_rule: SplitRule | None = None,
) -> RunResult:
    import torch

    from her2score.data.inputs import create_input_kind
    from her2score.engine.baselines import baseline_probs
    from her2score.engine.checkpoint import save_model
    from her2score.engine.diagnostics import learning_warnings, prior_log_loss
    from her2score.engine.evaluate import add_baselines, write_evaluation
    from her2score.engine.predictor import Predictor, prediction_frame, resolve_device
    from her2score.io import write_csv, write_json, write_text
    from her2score.models.registry import create_model, get_model_spec
    from her2score.report.plots import plot_training_curves

    cfg.validate()
    spec = get_model_spec(cfg.model)
    if cohort.task.name not in spec.tasks:
        raise ConfigError(f"model {cfg.model} does not support task {cohort.task.name}")
    options = model_options(cfg, spec)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")

    kind = create_input_kind(spec.input_kind, **{**spec.data, **cfg.data_config()})
    prepared = kind.prepare(cohort.frame.to_dict("records"), cfg.resolved_cache_dir(), cfg.workers, quiet)
    if prepared.failures:
        write_csv(run / "skipped_slides.csv", pd.DataFrame([f.__dict__ for f in prepared.failures]))
        log(f"{len(prepared.failures)} slide(s) cannot be used and are skipped (see skipped_slides.csv)")
    known = spec.options()
    for key, value in kind.model_options(prepared).items():
        if key in known and key not in cfg.model_args:
            options[key] = value  # decided by the data (e.g. the feature size of the bags)
    readable = cohort.subset(prepared.positions)
    if len(readable) < 4:
        raise ManifestError(f"only {len(readable)} readable slide(s); training needs at least 4", cohort.path)
    splits = split_rule(readable) if split_rule is not None else make_splits(readable, cfg)
    write_csv(run / "splits.csv", _splits_frame(readable, splits))
    device = resolve_device(cfg.device)

    result = RunResult(run, None, prepared.failures)
    fold_frames = []
    run_warnings: list[str] = []
    for k, split in enumerate(splits):
        out = run if split.name == "main" else run / split.name
        out.mkdir(parents=True, exist_ok=True)
        stats = kind.statistics(prepared, split.train, pretrained=bool(cfg.weights))
        data = FitData(kind, prepared, readable.y, stats, len(readable.classes))

        def build(j: int, k: int = k) -> Any:
            torch.manual_seed(cfg.seed + 7919 * k + 613 * j)
            return create_model(cfg.model, len(readable.classes), **options).to(device)

        fit_cfg, inner = cfg, None
        if use_inner_cv(cfg, len(split.train) + len(split.val)):
            pool = np.sort(np.concatenate([split.train, split.val]))
            inner = choose_by_inner_cv(readable, data, pool, cfg, out, build, resume, quiet, log)
            split = Split(split.name, pool, np.array([], dtype=np.int64), split.test)
            fit_cfg = final_config(cfg, inner)
            stats = kind.statistics(prepared, pool, pretrained=bool(cfg.weights))  # of what it trains on
            data = FitData(kind, prepared, readable.y, stats, len(readable.classes))
            log(f"{split.name}: {inner.note(len(pool))}")
            write_json(out / "inner_cv.json", {**inner.to_dict(), "note": inner.note(len(pool))})
            if out == run:  # config.yaml keeps the keys as asked (for --resume); a comment says what ran
                text = (run / "config.yaml").read_text(encoding="utf-8")
                comment = f"# model_choice used: inner-cv. {inner.note(len(pool))}\n"
                write_text(run / "config.yaml", text + comment)
        model = build(-1) if inner is not None else build(0)
        note = getattr(model, "weights_note", "training from scratch")
        log(f"{cfg.model} on {device}: {note}")
        judged, history = fit(
            model, data, split.train, split.val, fit_cfg, out,
            resume=resume, quiet=quiet, fold_seed=k, on_epoch_end=on_epoch_end, log=log,
        )  # fmt: skip
        if inner is not None and inner.fusion_weight is not None and hasattr(judged, "fusion_weight"):
            judged.fusion_weight.fill_(inner.fusion_weight)
        module = judged.inference_module()
        meta = checkpoint_metadata(cfg, readable, data, module, note)
        meta.update({"fold": split.name, "epochs_trained": len(history), "n_train": len(split.train)})
        meta["class_counts"] = np.bincount(readable.y[split.train], minlength=len(readable.classes)).tolist()
        result.model_paths.append(save_model(out / MODEL_FILE, module, meta))
        write_csv(out / "history.csv", pd.DataFrame(history))
        plot_training_curves(history, out / "training_curves.png", title=f"{cfg.model} {split.name}")
        if not len(split.test):
            result.notes.append(f"{split.name}: no test slides, so no held-out metrics")
            continue
        rows = readable.frame.iloc[split.test]
        predictor = Predictor(judged, kind, stats, device, tta=cfg.tta, num_classes=data.num_classes)
        probs = predictor.predict(prepared, split.test)
        frame = prediction_frame(
            list(rows["slide"]), probs, readable.classes,
            {"patient": list(rows["patient"]), "site": list(rows["site"]), "y_true": list(rows["label_name"]),
             "fold": k},
        )  # fmt: skip
        classes = readable.classes
        base = baseline_probs(kind, prepared, readable.y, split.train, split.test, stats, len(classes))
        frame = add_baselines(frame, base, classes)
        checked, val_labels = history, readable.y[split.val]
        if inner is not None:  # the inner folds' validation curves stand for the missing validation split
            checked, val_labels = [r for h in inner.histories for r in h], readable.y[split.train]
        prior = prior_log_loss(readable.y[split.train], val_labels, len(classes))
        majority = float(np.bincount(val_labels).max() / len(val_labels)) if len(val_labels) else None
        fold_warnings = learning_warnings(checked, prior, probs, classes, majority)
        for line in fold_warnings:
            log(f"WARNING ({split.name}): {line}")
        run_warnings += [line if split.name == "main" else f"{split.name}: {line}" for line in fold_warnings]
        fold_frames.append(frame)
        if split.name != "main":
            write_csv(out / "predictions.csv", frame)
            continue
        figures = [("Training curves", out / "training_curves.png")]
        figures += predictor.heatmaps(
            prepared.subset(split.test), list(rows["slide"]), out / "heatmaps", heatmaps,
            readable.classes,
        )  # fmt: skip
        result.metrics = write_evaluation(
            out, frame, readable.classes, f"{cfg.model} · {cohort.task.name} · held-out test slides",
            ordinal=cohort.task.ordinal, n_boot=cfg.n_boot, seed=cfg.seed, failures=prepared.failures,
            figures=figures, notes=[note, _validation_note(split, cfg, inner), cohort.task.description],
            warnings=run_warnings,
        )  # fmt: skip
    if cfg.folds and fold_frames:
        pooled = pd.concat(fold_frames, ignore_index=True)
        figures = [(f"Training curves {s.name}", run / s.name / "training_curves.png") for s in splits]
        result.metrics = write_evaluation(
            run, pooled, readable.classes, f"{cfg.model} · {cohort.task.name} · {cfg.folds}-fold CV",
            ordinal=cohort.task.ordinal, n_boot=cfg.n_boot, seed=cfg.seed, failures=prepared.failures,
            figures=figures, notes=[cohort.task.description], folds=True, warnings=run_warnings,
        )  # fmt: skip
    result.warnings = run_warnings
    return result


def _validation_note(split: Split, cfg: TrainConfig, inner: InnerChoice | None = None) -> str:
    """Which slides made which choice, so a reader can judge how much to trust them."""
    if inner is not None:
        return f"{inner.note(len(split.train))}; {len(split.test)} test slides"
    if not len(split.val):
        return f"no validation slides: the last epoch's weights were kept; {len(split.test)} test slides"
    return (
        f"{len(split.train)} training, {len(split.val)} validation and {len(split.test)} test slides, split "
        f"by patient; the validation slides chose the kept epoch (by {cfg.select}) and any choice the model "
        "makes after training (the fusion weight of a stain head); with few of them these choices are noisy"
    )


def _check_run_dir(run: Path, cfg: TrainConfig, resume: bool, overwrite: bool = False) -> None:
    """Refuse a folder this run must not write into; with ``overwrite``, clear an earlier run's
    checkpoints so that nothing of it mixes with the new one."""
    import yaml

    saved = run / "config.yaml"
    if run.exists() and not run.is_dir():
        raise ConfigError("is not a folder; --out names the run folder", run)
    contents = [p for p in run.iterdir() if not p.name.startswith(".her2score")] if run.is_dir() else []
    states = sorted(run.glob(f"**/{STATE_FILE}")) if contents else []
    is_run = bool(states) or (saved.is_file() and any(run.glob(f"**/{MODEL_FILE}")))
    if resume:
        if overwrite:
            raise ConfigError(
                "--resume continues the run in --out and --overwrite replaces it: pass one", run
            )
        if not states or not saved.is_file():
            raise ConfigError(
                f"nothing to resume: no earlier training run here (no config.yaml and {STATE_FILE}); "
                "leave out --resume to start one",
                run,
            )
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        new = cfg.to_dict()
        ignore = {"device", "workers", "cache_dir", "amp", "tta", "n_boot"}
        changed = sorted(k for k in new if k not in ignore and old.get(k) != new[k])
        if changed:
            raise ConfigError(f"--resume with a different configuration ({', '.join(changed)} changed)", run)
        return
    if not contents:
        return
    if not overwrite:
        if is_run:
            raise ConfigError(
                "run folder already holds a training; pass --resume to continue it, --overwrite to "
                "replace it, or choose another --out",
                run,
            )
        raise ConfigError(
            "is not empty and holds no her2score training run; choose another --out, or pass "
            "--overwrite to write into it anyway",
            run,
        )
    # --overwrite: an earlier run's checkpoints would be resumed from or mixed with the new run's
    import shutil

    if is_run:
        for fold in run.glob("fold_*"):
            if fold.is_dir() and not fold.is_symlink():
                shutil.rmtree(fold)
    for path in [*run.glob(f"**/{STATE_FILE}"), *run.glob(f"**/{MODEL_FILE}")]:
        path.unlink()


def _warn_one_class(cohort: Cohort, log: Callable[[str], None]) -> None:
    """Say it loudly when every training label is one class: the model can only learn that class."""
    present = sorted(set(cohort.frame["label_name"].astype(str)))
    if len(present) == 1:
        log(
            f"warning: every slide of {cohort.path.name if cohort.path else 'the cohort'} is {present[0]} "
            f"(one class of {', '.join(cohort.classes)}): the model can only learn to answer {present[0]}, "
            "and AUC and per-class metrics are undefined"
        )


def _listing(run: Path) -> set[Path]:
    """Files and folders under ``run`` (empty when it does not exist)."""
    return set(run.rglob("*")) if run.is_dir() else set()


def _remove_partial_run(run: Path, existed: bool, before: set[Path]) -> None:
    """After a failure: remove what this run created, unless it saved a training state to resume from."""
    if not run.is_dir() or any(run.glob(f"**/{STATE_FILE}")):
        return
    created = sorted(_listing(run) - before, key=lambda p: len(p.parts), reverse=True)
    for path in created:
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only emptied folders: a folder this run made holds only what it wrote
            else:
                path.unlink()
        except OSError:
            pass
    if not existed and not any(run.iterdir()):
        run.rmdir()


def _splits_frame(cohort: Cohort, splits: list[Split]) -> pd.DataFrame:
    rows = []
    for split in splits:
        for part in ("train", "val", "test"):
            for i in getattr(split, part):
                rows.append({"fold": split.name, "part": part, "slide": cohort.frame["slide"].iloc[i]})
    return pd.DataFrame(rows)
