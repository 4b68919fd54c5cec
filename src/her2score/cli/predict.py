"""``her2score predict``: class and probabilities per slide from a trained model, with optional heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import EXIT_CODES_BATCH, Cache, Device, Mpp, OutFile, Quiet, Scheduler, Workers


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the CLI."""
    app.command("predict", epilog=EXIT_CODES_BATCH)(predict)


def predict(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            help="A model.safetensors written by 'her2score train' (an .onnx with --backend onnxruntime); "
            "repeat for several models in one pass (columns prefixed by each model's run folder name).",
        ),
    ],
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
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="torch (model.safetensors) or onnxruntime (a 'her2score export' file)."
        ),
    ] = "torch",
    scheduler: Scheduler = None,
    quantify: Annotated[
        bool,
        typer.Option(
            "--quantify",
            help="Add the ASCO/CAP membrane quantifier's figures per slide (quantify_* columns; cells "
            "and overlays in <out stem>.quantify/).",
        ),
    ] = False,
) -> None:
    """Predict each slide's class; unreadable slides are listed at the end and in --out with their cause.

    Exit status 1 when any slide could not be predicted (also when none could).
    """
    from rich.text import Text

    from her2score.cli.checks import check_input_file, check_output_dir, check_output_file, make_console
    from her2score.engine.checkpoint import read_metadata
    from her2score.engine.evaluate import describe
    from her2score.engine.predict import predict_slides
    from her2score.errors import CheckpointError

    if backend not in ("torch", "onnxruntime"):
        from her2score.errors import ConfigError

        raise ConfigError(f"--backend must be torch or onnxruntime (got {backend!r})")
    for path in model:
        check_input_file(path, "model", CheckpointError, "; pass the model.safetensors inside a run folder")
    check_output_file(out)
    check_output_dir(heatmaps, "--heatmaps")
    check_output_dir(cache, "--cache")
    console = make_console()
    for path in model:
        if backend == "onnxruntime":
            from her2score.export.onnx import OnnxModel

            console.print(describe(OnnxModel(path).meta) + " · ONNX Runtime")
        else:
            console.print(describe(read_metadata(path)))
    frame, failures = predict_slides(
        model[0] if len(model) == 1 else model, slides, out, heatmap_dir=heatmaps, device=device, mpp=mpp,
        cache_dir=cache, workers=workers, quiet=quiet, backend=backend, scheduler=scheduler,
        quantify=quantify,
    )  # fmt: skip
    warned = frame[frame["status"].str.startswith("warning")]
    done = int((frame["status"] == "ok").sum()) + len(warned)
    console.print(f"{done} slide(s) predicted -> {out}" + (f"; heatmaps in {heatmaps}" if heatmaps else ""))
    for row in warned.itertuples():
        console.print(Text.assemble((f"{row.slide}:", "yellow"), f" {row.status}"))
    if failures:
        console.print(f"{len(failures)} slide(s) skipped:", style="yellow")
        for f in failures:
            console.print(f"  {f.slide}: {f.cause}")
        raise typer.Exit(1)
