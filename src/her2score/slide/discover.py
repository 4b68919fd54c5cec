"""Which files a command works on: files as given, folders expanded to the slides and images in them.

A folder is searched (not recursively) for files whose *content* is a slide or image format
(:func:`~her2score.slide.reader.sniff_format`), so that sidecar files beside the slides (a cohort's
``manifest.csv``, ``*.cells.parquet``, ``*.json``, overlays written by an earlier run are PNG and are
skipped by name pattern) never reach a reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from her2score.errors import SlideError

#: Files her2score itself writes beside inputs; never taken as inputs when a folder is expanded.
OUTPUT_PATTERNS = re.compile(r"\.(overlay|gradcam|heatmap|cells)\.[a-z]+$|\.part(\.[a-z]+)?$", re.IGNORECASE)


def is_slide_file(path: Path) -> bool:
    """True when ``path`` is a regular file whose first bytes are a slide or image format."""
    from her2score.slide.reader import sniff_format

    if not path.is_file() or path.name.startswith(".") or OUTPUT_PATTERNS.search(path.name):
        return False
    try:
        sniff_format(path)
    except SlideError:
        return False
    return True


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (checked later by the reader, so a bad one is reported with its cause); each
    folder replaced by the slide/image files in it, by content, sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not any(p.glob("*.dcm")):
            out += sorted(f for f in p.iterdir() if is_slide_file(f))
        else:
            out.append(p)
    return out
