"""``her2score demo``: synthetic cohort -> small CNN on the CPU -> held-out evaluation -> report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from her2score.cli.options import EXIT_CODES, Device, Out, Quiet

#: The demo trains with the default recipe (``small-cohort``: ResNet-18 from scratch with a moving
#: average of its weights and the stain-statistics head, 192 px at 8 µm/px; README, Results), on a
#: quarter of the slides held out; `--model lowres-convnext` trains the ConvNeXt instead.
DEMO_CONFIG: dict[str, Any] = {
    "task": "her2-3way",
    "recipe": "small-cohort",
    "model": "lowres-resnet",
    "test_fraction": 0.25,
    "val_fraction": 0.2,
    "n_boot": 1000,
}
#: The demo's synthetic slides: 4 x 3 mm of tissue (more tissue per slide lifted the held-out AUC over
#: three seeds from 0.849 on 3 x 2.2 mm slides to 0.883; README), scanned at 1 µm/px (10x) so that
#: generation stays fast: the classifier reads them at 8 µm/px anyway.
DEMO_SLIDE_MM = (4.0, 3.0)
DEMO_SLIDE_MPP = 1.0
#: Written into the demo's run folder when the demo creates it; only a folder carrying it is ever
#: deleted by a later demo (``--out`` may point at a folder holding the user's own ``run``).
RUN_MARKER = ".her2score-demo"


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the CLI."""
    app.command("demo", epilog=EXIT_CODES)(demo)


def demo(
    out: Out = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", min=12, help="Synthetic HER2 slides to generate.")] = 120,
    model: Annotated[
        str | None, typer.Option("--model", help="Registered model (default: lowres-resnet).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Maximum epochs (at least 1).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (cohort and training).")] = 0,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic cohort, train a small CNN, evaluate on held-out slides, write the report."""
    import time

    from her2score.cli.checks import check_output_dir, make_console
    from her2score.cli.train import summarise
    from her2score.data.manifest import load_manifest
    from her2score.data.synth import make_cohort
    from her2score.engine.config import config_from_dict
    from her2score.engine.train import train_run

    for folder in (out, out / "cohort", out / "cache", out / "run"):
        check_output_dir(folder)
    console = make_console()
    start = time.perf_counter()
    run = out / "run"
    fresh_run_folder(run)  # before minutes of cohort generation, so that a refusal comes at once
    manifest = out / "cohort" / "manifest.csv"
    if manifest.is_file():
        console.print(f"reusing the synthetic cohort in {manifest.parent}")
    else:
        console.print(f"generating {n} synthetic HER2 slides in {out / 'cohort'}")
        manifest = make_cohort(
            out / "cohort", n=n, seed=seed, kind="slides", size_mm=DEMO_SLIDE_MM, mpp=DEMO_SLIDE_MPP
        )
    console.print(f"cohort ready in {time.perf_counter() - start:.0f} s")
    cfg = config_from_dict(
        {
            **DEMO_CONFIG,
            "seed": seed,
            "device": device,
            "cache_dir": str(out / "cache"),
            **({"epochs": epochs} if epochs is not None else {}),
            **({"model": model} if model else {}),
        }
    )
    cohort = load_manifest(manifest, cfg.task, cfg.equivocal)
    result = train_run(cohort, cfg, run, quiet=quiet, log=console.print)
    summarise(result, console, time.perf_counter() - start)


def fresh_run_folder(run: Path) -> None:
    """Make ``run`` an empty folder carrying :data:`RUN_MARKER`: the demo always trains afresh (its
    timing is part of what it shows), so an earlier demo's run is deleted, but nothing else is.

    Raises:
        Her2ScoreError: ``run`` exists and was not made by the demo (no marker, a file or a link).
    """
    import shutil

    from her2score.errors import Her2ScoreError

    if run.is_symlink() or run.exists():
        if run.is_symlink() or not run.is_dir() or not (run / RUN_MARKER).is_file():
            raise Her2ScoreError(
                f"exists and was not made by 'her2score demo' (no {RUN_MARKER} in it); "
                "not deleting it: pass another --out or remove it yourself",
                run,
            )
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / RUN_MARKER).write_text("made by 'her2score demo'; the next demo run deletes this folder\n")
