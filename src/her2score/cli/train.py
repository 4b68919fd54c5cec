"""``her2score train``: train a slide-level model from a manifest (one run, fixed splits, or k-fold CV)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import (
    EXIT_CODES_BATCH,
    ConfigFile,
    Device,
    ModelName,
    Out,
    Quiet,
    Recipe,
    Task,
    TrainManifest,
    Workers,
)


def register(app: typer.Typer) -> None:
    """Add ``train`` to the CLI."""
    app.command("train", epilog=EXIT_CODES_BATCH)(train)


def train(
    manifest: TrainManifest,
    out: Out,
    task: Task = None,
    model: ModelName = None,
    folds: Annotated[
        int | None, typer.Option("--folds", help="k-fold patient-grouped cross-validation (k >= 2).")
    ] = None,
    config: ConfigFile = None,
    recipe: Recipe = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs.")] = None,
    device: Device = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last epoch.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out: replaces an earlier run there, whatever it holds.",
        ),
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (same seed, same result).")] = None,
    workers: Workers = 0,
    quiet: Quiet = False,
) -> None:
    """Train on a cohort; writes config, checkpoints, metrics with 95% CIs, plots and a report to --out.

    A missing or unreadable slide is skipped, listed at the end and in skipped_slides.csv (exit status 1).
    """
    import os
    import time

    from her2score.cli.checks import check_input_file, check_output_dir, make_console
    from her2score.data.manifest import TASKS, load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.distributed import process_group
    from her2score.engine.train import train_run
    from her2score.errors import ConfigError, ManifestError

    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown --task {task!r}; tasks: {', '.join(TASKS)}")
    check_input_file(manifest, "manifest", ManifestError)
    check_input_file(config, "config", ConfigError, allow_empty=True)
    check_output_dir(out)
    console = make_console()
    console.quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 speaks for all
    start = time.perf_counter()
    cfg = load_config(
        config, task=task, model=model, folds=folds, epochs=epochs, seed=seed, recipe=recipe,
        device=None if device == "auto" and config else device, workers=workers or None,
    )  # fmt: skip
    check_output_dir(Path(cfg.cache_dir) if cfg.cache_dir else None, "cache_dir")
    cohort = load_manifest(manifest, cfg.task, cfg.equivocal, check_files=False)  # missing: skipped, listed
    console.print(f"{len(cohort)} slides for task {cfg.task} ({', '.join(cohort.classes)}) from {manifest}")
    with process_group(cfg.device) as processes:  # several under torchrun: DistributedDataParallel
        if processes > 1:
            result = _train_rank(cohort, cfg, out, resume, quiet, console, overwrite)
        else:
            result = train_run(
                cohort, cfg, out, resume=resume, quiet=quiet, log=console.print, overwrite=overwrite
            )
    if result is None:
        return  # a rank other than 0: rank 0 reports
    summarise(result, console, time.perf_counter() - start)
    if getattr(result, "failures", None):
        raise typer.Exit(1)


def _train_rank(
    cohort: object, cfg: object, out: Path, resume: bool, quiet: bool, console: object, overwrite: bool
) -> object:
    """One of the processes ``torchrun`` started: rank 0 trains into ``out`` and reports; the others
    train alongside into a scratch folder (removed), silently, and return None."""
    import dataclasses

    from her2score.engine.distributed import is_main, rank_run_dir
    from her2score.engine.train import train_run

    if is_main():
        console.print(f"DistributedDataParallel over the torchrun processes; rank 0 writes {out}")  # type: ignore[attr-defined]
        return train_run(cohort, cfg, out, resume=resume, quiet=quiet, log=console.print, overwrite=overwrite)  # type: ignore[arg-type,attr-defined]
    with rank_run_dir(out) as scratch:
        # the same steps as rank 0 (the collectives need them all), writing nothing that stays
        quick = dataclasses.replace(cfg, n_boot=0)  # type: ignore[type-var]
        train_run(cohort, quick, scratch, quiet=True, log=lambda s: None, heatmaps=0)  # type: ignore[arg-type]
    return None


def summarise(result: object, console: object, seconds: float) -> None:
    """Print the headline metrics, where the outputs are, and the slides that were skipped."""
    metrics = getattr(result, "metrics", None)
    run_dir = getattr(result, "run_dir", None)
    if metrics:
        pooled = metrics.get("pooled", metrics)
        ci = pooled.get("ci", {})
        parts = []
        for key in ("auc_macro", "f1_macro", "accuracy", "kappa_qw"):
            value = pooled.get(key)
            if value is None:
                continue
            low, high = ci.get(key, [float("nan"), float("nan")])
            parts.append(f"{key} {value:.3f} [{low:.3f}, {high:.3f}]")
        console.print("held-out: " + " · ".join(parts))  # type: ignore[attr-defined]
        for name, base in (metrics.get("baselines") or {}).items():
            shown = " · ".join(
                f"{key} {base[key]:.3f}"
                for key in ("auc_macro", "f1_macro", "accuracy")
                if base.get(key) is not None
            )
            console.print(f"  same slides, {name}: {shown}")  # type: ignore[attr-defined]
    for warning in (metrics or {}).get("warnings", []) or getattr(result, "warnings", []):
        console.print(f"WARNING: {warning}", style="bold yellow", markup=False, highlight=False)  # type: ignore[attr-defined]
    for note in getattr(result, "notes", []):
        console.print(note)  # type: ignore[attr-defined]
    failures = getattr(result, "failures", [])
    if failures:
        console.print(f"{len(failures)} slide(s) skipped:", style="yellow")  # type: ignore[attr-defined]
        for f in failures:
            console.print(f"  {f.slide}: {f.cause}")  # type: ignore[attr-defined]
    console.print(f"done in {seconds:.0f} s; outputs in {run_dir} (report.html)")  # type: ignore[attr-defined]
