"""``her2score predict``: class and probabilities per slide from a trained model, with optional heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import Cache, Device, Mpp, OutFile, Quiet, Workers


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the CLI."""
    app.command("predict")(predict)


def predict(
    model: Annotated[Path, typer.Option("--model", help="A model.safetensors written by 'her2score train'.")],
    slides: Annotated[list[Path], typer.Argument(help="Slide files, or folders of slides.")],
    out: OutFile,
    heatmaps: Annotated[
        Path | None, typer.Option("--heatmaps", help="Folder for Grad-CAM overlays (PNG, one per slide).")
    ] = None,
    mpp: Mpp = None,
    device: Device = "auto",
    workers: Workers = 0,
    cache: Cache = None,
    quiet: Quiet = False,
) -> None:
    """Predict each slide's class; unreadable slides are listed at the end (exit status 1 if any)."""
    from rich.console import Console

    from her2score.engine.checkpoint import read_metadata
    from her2score.engine.evaluate import describe
    from her2score.engine.predict import predict_slides

    console = Console(stderr=True)
    console.print(describe(read_metadata(model)), highlight=False)
    frame, failures = predict_slides(
        model, slides, out, heatmap_dir=heatmaps, device=device, mpp=mpp, cache_dir=cache,
        workers=workers, quiet=quiet,
    )  # fmt: skip
    warned = frame[frame["status"].str.startswith("warning")]
    done = int((frame["status"] == "ok").sum()) + len(warned)
    console.print(f"{done} slide(s) predicted -> {out}" + (f"; heatmaps in {heatmaps}" if heatmaps else ""))
    for row in warned.itertuples():
        console.print(f"[yellow]{row.slide}:[/] {row.status}", highlight=False)
    if failures:
        console.print(f"[yellow]{len(failures)} slide(s) skipped:[/]")
        for f in failures:
            console.print(f"  {f.slide}: {f.cause}", highlight=False)
        raise typer.Exit(2 if done == 0 else 1)
