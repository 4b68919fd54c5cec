"""Rich progress bars shared by every command: on stderr, so that results piped from stdout stay clean;
silent with ``quiet``."""

from __future__ import annotations

from typing import Any


def progress_bar(quiet: bool = False, transient: bool = False) -> Any:
    """A ``rich.progress.Progress``: bar, counts, elapsed and remaining time; metrics in the description."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # names are text, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=transient,
    )
