"""``her2score evaluate``: score a manifest with a trained model; metrics with CIs, plots, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.options import Cache, Device, Out, Quiet, Workers


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the CLI."""
    app.command("evaluate")(evaluate)


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
    """Evaluate a trained model on the slides of a manifest (unreadable slides are skipped and listed)."""
    from rich.console import Console

    from her2score.engine.evaluate import evaluate_model

    console = Console(stderr=True)
    metrics, failures = evaluate_model(
        model, manifest, out, device=device, cache_dir=cache, workers=workers, quiet=quiet, n_boot=n_boot
    )
    ci = metrics.get("ci", {})
    auc = metrics.get("auc_macro")
    low, high = ci.get("auc_macro", [float("nan")] * 2)
    console.print(
        f"{metrics['n']} slides: macro AUC {auc:.3f} [{low:.3f}, {high:.3f}]"
        f" · macro F1 {metrics['f1_macro']:.3f} · accuracy {metrics['accuracy']:.3f}"
        f"; report in {out}/report.html"
    )
    for f in failures:
        console.print(f"[yellow]skipped[/] {f.slide}: {f.cause}", highlight=False)
