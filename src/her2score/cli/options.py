"""Option definitions shared by every subcommand, written once so that all behave alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Mpp = Annotated[
    float | None,
    typer.Option("--mpp", help="Level-0 resolution in µm/px, for images without it in their metadata."),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]
Device = Annotated[
    str, typer.Option("--device", help="Where models run: auto (CUDA when available), cpu, cuda or cuda:N.")
]
Workers = Annotated[
    int, typer.Option("--workers", "-j", min=0, help="Worker processes (0: in the main process).")
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Cache = Annotated[
    Path | None, typer.Option("--cache", help="Folder caching low-resolution images (default: none).")
]
