"""``her2score learning-curve``: held-out macro AUC against the number of training slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import (
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
    """Add ``learning-curve`` to the CLI."""
    app.command("learning-curve")(learning_curve)


def learning_curve(
    manifest: TrainManifest,
    out: Out,
    sizes: Annotated[
        str, typer.Option("--sizes", help="Comma-separated numbers of training slides, e.g. 16,32,64.")
    ],
    task: Task = None,
    model: ModelName = None,
    config: ConfigFile = None,
    recipe: Recipe = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the test split and subsets.")] = None,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace earlier runs under --out.")] = False,
    workers: Workers = 0,
    quiet: Quiet = False,
) -> None:
    """Hold out one patient-grouped test set, train on nested subsets of each size of the rest with the
    full recipe, and write learning_curve.csv/.json/.png (model and stain-statistics baseline)."""
    from her2score.cli.checks import check_input_file, make_console
    from her2score.data.manifest import TASKS, load_manifest
    from her2score.engine.config import load_config
    from her2score.engine.learning_curve import learning_curve as run_curve
    from her2score.errors import ConfigError, ManifestError

    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown --task {task!r}; tasks: {', '.join(TASKS)}")
    try:
        counts = [int(v) for v in sizes.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, not {sizes!r}") from None
    if not counts or min(counts) < 4:
        raise ConfigError("--sizes needs at least one size, each of 4 slides or more")
    check_input_file(manifest, "manifest", ManifestError)
    check_input_file(config, "config", ConfigError, allow_empty=True)
    console = make_console()
    cfg = load_config(
        config, task=task, model=model, seed=seed, recipe=recipe,
        device=None if device == "auto" and config else device, workers=workers or None,
    )  # fmt: skip
    cohort = load_manifest(manifest, cfg.task, cfg.equivocal, check_files=False)
    frame = run_curve(cohort, cfg, counts, out, quiet=quiet, log=console.print, overwrite=overwrite)
    console.print(frame.to_string(index=False))
    console.print(f"learning curve: {Path(out) / 'learning_curve.png'}")
