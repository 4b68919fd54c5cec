"""Option definitions shared by every subcommand, written once so that all behave alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2score.cli.checks import check_mpp

Mpp = Annotated[
    float | None,
    typer.Option(
        "--mpp",
        callback=check_mpp,
        help="Level-0 resolution in µm/px (0.05-1000), for images without it in their metadata.",
    ),
]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Output folder (created if missing; checked before any work).")
]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]
Device = Annotated[
    str, typer.Option("--device", help="Where models run: auto (CUDA when available), cpu, cuda or cuda:N.")
]
Workers = Annotated[
    int, typer.Option("--workers", "-j", min=0, help="Worker processes (0: in the main process).")
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask distributed scheduler (tcp://host:port): the slides are scored on its workers, which "
        "see the same paths; this process keeps the resume journal and the results. Needs "
        "her2score[distributed].",
    ),
]
Cache = Annotated[
    Path | None,
    typer.Option("--cache", help="Folder caching low-resolution images (default: the user cache)."),
]

# The training commands (train, learning-curve, compare) take the same task, model, config and recipe.
TrainManifest = Annotated[
    Path, typer.Option("--manifest", "-m", help="Manifest CSV: slide, her2, ... columns.")
]
Task = Annotated[str | None, typer.Option("--task", help="her2-3way (default), her2-4way, er or pr.")]
ModelName = Annotated[str | None, typer.Option("--model", help="Registered model (see 'her2score models').")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML/JSON config; flags given here override it.")
]
Recipe = Annotated[
    str | None,
    typer.Option("--recipe", help="Named preset under the config: small-cohort (default) or legacy."),
]

#: Exit statuses shared by every command (each command's help repeats the ones it uses).
EXIT_CODES = (
    "Exit status: 0 done; 2 bad usage or input (one line 'error: FILE: cause', nothing done); "
    "130 interrupted."
)
EXIT_CODES_BATCH = (
    "Exit status: 0 every item done; 1 done but some items failed (listed, and in the outputs), also when "
    "all failed; 2 bad usage or input (one line 'error: FILE: cause', nothing done); 130 interrupted."
)
