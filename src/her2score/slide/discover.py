"""Which files a command works on: files as given, folders expanded to the slides and images in them.

A folder is searched (not recursively) for regular files whose *content* is a slide or image format
(:func:`~her2score.slide.reader.sniff_format`), so that sidecar files beside the slides (a cohort's
``manifest.csv``, ``*.cells.parquet``, ``*.json``) never reach a reader. Images her2score itself writes
beside inputs (overlays, heatmaps: PNG) are skipped by name, and so are hidden files. Named pipes,
devices and sockets are skipped without being opened (opening a FIFO blocks until a writer comes).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from pathlib import Path

from her2score.errors import SlideError

#: Files her2score itself writes beside inputs; never taken as inputs when a folder is expanded.
OUTPUT_PATTERNS = re.compile(r"\.(overlay|gradcam|heatmap|cells)\.[a-z]+$|\.part(\.[a-z]+)?$", re.IGNORECASE)


def is_slide_file(path: Path) -> bool:
    """True when ``path`` is a regular file (or a link to one), not hidden, not one of her2score's
    outputs, whose first bytes are a slide or image format."""
    from her2score.slide.reader import sniff_format

    if path.name.startswith(".") or OUTPUT_PATTERNS.search(path.name):
        return False
    try:
        mode = path.stat().st_mode
    except OSError:  # a dangling link, a file removed meanwhile
        return False
    if not stat.S_ISREG(mode):  # checked before anything opens it
        return False
    try:
        sniff_format(path)
    except SlideError:
        return False
    return True


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (checked later by the reader, so a bad one is reported with its cause); each
    folder replaced by the slide/image files in it, by content, sorted by name. A folder of DICOM
    files is one slide and is kept as given.

    Raises:
        SlideError: a folder holds no slide or image file.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not any(p.glob("*.dcm")):
            found = sorted(f for f in p.iterdir() if is_slide_file(f))
            if not found:
                raise SlideError("folder holds no slide or image file (judged by content, not name)", p)
            out += found
        else:
            out.append(p)
    return out
