"""``her2score compare``: the low-res model, the stain-statistics baseline and patch-based models (tile
features + MIL aggregators) on identical patient-grouped splits, accuracy and per-slide cost side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import EXIT_CODES, Device, Out, Quiet


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the CLI."""
    app.command("compare", epilog=EXIT_CODES)(compare)


def compare(
    manifest: Annotated[
        Path,
        typer.Option("--manifest", "-m", help="Manifest CSV: slide, her2, ... columns (slides, not bags)."),
    ],
    out: Out,
    task: Annotated[
        str | None, typer.Option("--task", help="her2-3way (default), her2-4way, er or pr.")
    ] = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated: lowres, stain and bag models (abmil, mean-mil, clam-sb, transmil, dsmil, "
            "patch-classifier; patch-classifier:majority or :top-percentile for another tile-to-slide rule "
            "than the mean).",
        ),
    ] = "lowres,stain,abmil,clam-sb,transmil,patch-classifier",
    lowres_mpp: Annotated[
        float, typer.Option("--lowres-mpp", min=1.0, max=64.0, help="µm/px of the low-res model's input.")
    ] = 8.0,
    patch_mpp: Annotated[
        float,
        typer.Option("--patch-mpp", min=0.05, help="µm/px the tiles of the patch-based methods are read at."),
    ] = 1.0,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder", help="Tile encoder: timm:ARCH (a CNN; random unless --encoder-weights) or stain."
        ),
    ] = "timm:resnet50",
    encoder_weights: Annotated[
        Path | None,
        typer.Option("--encoder-weights", help="Local weights for a timm encoder (never downloaded)."),
    ] = None,
    tile: Annotated[int, typer.Option("--tile", min=16, help="Tile size in pixels.")] = 224,
    sweep: Annotated[
        bool,
        typer.Option("--sweep", help="Resolution sweep: low-res at 4/8/16 µm/px, patches at 0.5/1/2 µm/px."),
    ] = False,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta/--no-tta",
            help="The low-res model's 8 test-time flips/rotations (in its accuracy and its cost); off by "
            "default: the patch methods have none.",
        ),
    ] = False,
    folds: Annotated[int | None, typer.Option("--folds", help="k-fold patient-grouped CV (k >= 2).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs of every method.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML/JSON training config shared by all methods; flags override it."
        ),
    ] = None,
    heatmaps: Annotated[
        int, typer.Option("--heatmaps", min=0, help="Test slides drawn with Grad-CAM and attention maps.")
    ] = 3,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed of the splits and the training.")
    ] = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Train every method on the same splits; write OUT/comparison.csv, OUT/accuracy_vs_cost.png and
    OUT/report.html (table, plot, Grad-CAM and attention heatmaps). Runs go to OUT/runs, caches to
    OUT/cache (or the config's cache_dir): a rerun reuses them and reports the first preparation's time."""
    import time

    from her2score.cli.checks import check_input_file, check_output_dir, make_console
    from her2score.data.manifest import TASKS
    from her2score.engine.compare import SWEEP_LOWRES_MPP, SWEEP_PATCH_MPP, CompareOptions, compare_methods
    from her2score.engine.config import load_config
    from her2score.errors import CheckpointError, ConfigError, ManifestError

    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown --task {task!r}; tasks: {', '.join(TASKS)}")
    check_input_file(manifest, "manifest", ManifestError)
    check_input_file(config, "config", ConfigError, allow_empty=True)
    check_input_file(encoder_weights, "encoder weights", CheckpointError)
    check_output_dir(out)
    cfg = load_config(
        config, task=task, folds=folds, epochs=epochs, seed=seed,
        device=None if device == "auto" and config else device,
    )  # fmt: skip
    options = CompareOptions(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        lowres_mpps=SWEEP_LOWRES_MPP if sweep else (lowres_mpp,),
        patch_mpps=SWEEP_PATCH_MPP if sweep else (patch_mpp,),
        encoder=encoder, encoder_weights=str(encoder_weights) if encoder_weights else None, tile_size=tile,
        heatmaps=heatmaps, lowres_tta=tta,
    )  # fmt: skip
    console = make_console()
    start = time.perf_counter()
    result = compare_methods(manifest, out, cfg, options, quiet=quiet, log=console.print)
    shown = result.table[["method", "mpp", "auc_macro", "f1_macro", "accuracy", "prep_s_per_slide",
                          "infer_s_per_slide"]]  # fmt: skip
    console.print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"), markup=False)
    for line in result.headline + result.notes:
        console.print(line, markup=False, highlight=False)
    console.print(f"done in {time.perf_counter() - start:.0f} s: {result.csv}, {result.report}")
