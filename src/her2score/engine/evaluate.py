"""Evaluation shared by every model: probabilities, metrics with CIs, per-site breakdown, plots, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2score.data.lowres import Failure


def resolve_device(name: str = "auto") -> Any:
    """``auto``: CUDA when available, else CPU; otherwise the named torch device."""
    import torch

    from her2score.errors import ConfigError

    # Tiny activations (denormal floats) make CPU kernels many times slower; they carry no signal.
    torch.set_flush_denormal(True)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but CUDA is not available on this machine")
    return device


def dihedral_views(x: Any) -> list[Any]:
    """The 8 flips and 90° rotations of a square batch (B, C, H, W); only the 2 flips of a non-square one."""
    import torch

    if x.shape[-1] != x.shape[-2]:
        return [x, x.flip(-1)]
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def predict_probs(
    model: Any, images: Any, meta: dict[str, Any], device: Any, batch_size: int = 16, tta: bool | None = None
) -> np.ndarray:
    """Class probabilities (N, K) for uint8 images (N, 3, H, W), in eval mode without gradients.

    With test-time augmentation (``tta``, default: the checkpoint's ``meta["tta"]``), the softmax is
    averaged over the flips and 90° rotations of each image: a slide has no canonical orientation, and
    the average is steadier than any single view.
    """
    import torch

    from her2score.engine.data import to_model_input

    tta = bool(meta.get("tta", False)) if tta is None else tta
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start : start + batch_size], meta["mean"], meta["std"], device)
            views = dihedral_views(x) if tta else [x]
            probs = sum(torch.softmax(model(v).float(), dim=1) for v in views) / len(views)
            out.append(probs.cpu().numpy())
    k = len(meta["classes"])
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


def prediction_frame(
    slides: list[str], probs: np.ndarray, classes: list[str], extra: dict[str, Any] | None = None
) -> pd.DataFrame:
    """``slide, [extra...], predicted, prob_<class>...`` with one row per slide."""
    frame = pd.DataFrame({"slide": slides, **(extra or {})})
    frame["predicted"] = [classes[i] for i in probs.argmax(1)] if len(probs) else []
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, k] if len(probs) else []
    return frame


def write_evaluation(
    out_dir: str | Path,
    predictions: pd.DataFrame,
    classes: list[str],
    title: str,
    ordinal: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    failures: list[Failure] | None = None,
    figures: list[tuple[str, Path]] | None = None,
    notes: list[str] | None = None,
    folds: bool = False,
) -> dict[str, Any]:
    """Metrics (with bootstrap CIs), per-site metrics, ROC and confusion plots and a report in ``out_dir``.

    ``predictions`` has ``slide, y_true, prob_<class>...`` (and ``site``; ``fold`` when ``folds``).
    """
    from her2score.io import write_csv, write_json
    from her2score.report.document import write_report
    from her2score.report.metrics import (
        classification_metrics,
        group_metrics,
        group_table,
        per_class_table,
        pool_folds,
    )
    from her2score.report.plots import plot_confusion, plot_roc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob_cols = [f"prob_{c}" for c in classes]
    probs = predictions[prob_cols].to_numpy(float)
    y = predictions["y_true"].astype(str).to_numpy()
    if folds:
        frames = [f for _, f in predictions.groupby("fold", sort=True)]
        metrics = pool_folds(frames, classes, n_boot=n_boot, seed=seed, ordinal=ordinal)
        pooled = metrics["pooled"]
    else:
        metrics = classification_metrics(y, probs, classes, n_boot=n_boot, seed=seed, ordinal=ordinal)
        pooled = metrics
    tables: dict[str, pd.DataFrame] = {"Per class": per_class_table(pooled)}
    if "site" in predictions and predictions["site"].nunique() > 1:
        by_site = group_metrics(y, probs, predictions["site"].astype(str), classes, n_boot=0, ordinal=ordinal)
        metrics["by_site"] = by_site
        tables["Per site"] = group_table(by_site)
    write_json(out / "metrics.json", metrics)
    write_csv(out / "predictions.csv", predictions)
    roc = plot_roc(y, probs, classes, out / "roc.png", title=f"{title}: ROC")
    confusion = plot_confusion(
        pooled["confusion"], classes, out / "confusion.png", title=f"{title}: confusion"
    )
    all_notes = list(notes or [])
    if failures:
        write_csv(out / "skipped_slides.csv", pd.DataFrame([f.__dict__ for f in failures]))
        all_notes.append(f"{len(failures)} slide(s) skipped (see skipped_slides.csv):")
        all_notes += [f"skipped {Path(f.slide).name}: {f.cause}" for f in failures]
    write_report(
        out,
        title,
        metrics=metrics,
        figures=[("ROC curves (one-vs-rest)", roc), ("Confusion matrix", confusion), *(figures or [])],
        tables=tables,
        notes=all_notes,
    )
    return metrics


def gradcam_figures(
    model: Any,
    images: Any,
    names: list[str],
    meta: dict[str, Any],
    device: Any,
    out_dir: str | Path,
    limit: int | None = None,
) -> list[tuple[str, Path]]:
    """Grad-CAM overlays (image | overlay) for the first ``limit`` images; ``(caption, path)`` pairs."""
    from her2score.engine.data import to_model_input
    from her2score.engine.explain import save_gradcam

    figures = []
    for i, name in enumerate(names[:limit] if limit else names):
        x = to_model_input(images[i : i + 1], meta["mean"], meta["std"], device)
        rgb = images[i].permute(1, 2, 0).numpy()
        path, target = save_gradcam(model, rgb, x, Path(out_dir) / f"{Path(name).stem}.gradcam.png")
        figures.append((f"Grad-CAM {Path(name).name}: predicted {meta['classes'][target]}", path))
    return figures


def evaluate_model(
    model_path: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    heatmaps: int = 6,
) -> tuple[dict[str, Any], list[Failure]]:
    """Score a manifest's slides with a saved model and write metrics, plots and a report."""
    from her2score.data.lowres import LowResParams
    from her2score.data.manifest import load_manifest
    from her2score.engine.checkpoint import load_model
    from her2score.engine.data import build_inputs

    dev = resolve_device(device)
    model, meta = load_model(model_path, dev)
    cohort = load_manifest(manifest, meta["task"], meta.get("equivocal", "ish"))
    params = LowResParams(meta["mpp"], meta["input_size"], meta.get("margin", 0.02))
    inputs = build_inputs(
        meta["input_kind"], cohort.slides, params, cache_dir, list(cohort.frame["mpp"]), workers, quiet
    )
    rows = cohort.frame.iloc[inputs.positions]
    probs = predict_probs(model, inputs.images, meta, dev)
    frame = prediction_frame(
        list(rows["slide"]),
        probs,
        meta["classes"],
        {"patient": list(rows["patient"]), "site": list(rows["site"]), "y_true": list(rows["label_name"])},
    )
    out = Path(out_dir)
    figures = gradcam_figures(
        model, inputs.images, list(rows["slide"]), meta, dev, out / "heatmaps", heatmaps
    )
    metrics = write_evaluation(
        out,
        frame,
        meta["classes"],
        f"{meta['model']} on {Path(manifest).name} ({meta['task']})",
        ordinal=meta.get("ordinal", True),
        n_boot=n_boot,
        seed=seed,
        failures=inputs.failures,
        figures=figures,
        notes=[
            f"model {Path(model_path).name}: {meta['model']} / {meta.get('backbone')} at {meta['mpp']} µm/px"
        ],
    )
    return metrics, inputs.failures
