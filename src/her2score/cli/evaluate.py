"""``her2score evaluate``: score a manifest with a trained model; metrics with CIs, plots, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import EXIT_CODES_BATCH, Cache, Device, Out, Quiet, Workers


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the CLI."""
    app.command("evaluate", epilog=EXIT_CODES_BATCH)(evaluate)


def evaluate(
    model: Annotated[Path, typer.Option("--model", help="A model.safetensors written by 'her2score train'.")],
    manifest: Annotated[Path, typer.Option("--manifest", "-m", help="Manifest CSV with the true labels.")],
    out: Out,
    device: Device = "auto",
    workers: Workers = 0,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for the 95% CIs.")
    ] = 1000,
    cache: Cache = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a trained model on the slides of a manifest: metrics with 95% CIs, plots, report.

    A missing or unreadable slide is skipped, listed at the end and in skipped_slides.csv (exit status 1).
    """
    from her2score.cli.checks import check_input_file, check_output_dir, make_console
    from her2score.engine.evaluate import evaluate_model
    from her2score.errors import CheckpointError, ManifestError

    check_input_file(model, "model", CheckpointError, "; pass the model.safetensors inside a run folder")
    check_input_file(manifest, "manifest", ManifestError)
    check_output_dir(out)
    check_output_dir(cache, "--cache")
    console = make_console()
    metrics, failures = evaluate_model(
        model, manifest, out, device=device, cache_dir=cache, workers=workers, quiet=quiet, n_boot=n_boot
    )
    ci = metrics.get("ci", {})
    auc = metrics.get("auc_macro")
    low, high = ci.get("auc_macro", [float("nan")] * 2)
    console.print(
        f"{metrics['n']} slides: macro AUC {_num(auc)} [{_num(low)}, {_num(high)}]"
        f" · macro F1 {_num(metrics.get('f1_macro'))} · accuracy {_num(metrics.get('accuracy'))}"
        f"; report in {out}/report.html"
    )
    for f in failures:
        console.print(f"skipped {f.slide}: {f.cause}", style="yellow")
    if failures:
        raise typer.Exit(1)


def _num(value: object) -> str:
    """A metric with 3 decimals, or n/a (a metric undefined on this cohort is None or NaN)."""
    return f"{value:.3f}" if isinstance(value, int | float) and value == value else "n/a"
