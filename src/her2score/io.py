"""Atomic output: everything is written to a temporary name beside the target, then renamed."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success.

    A crash or an exception leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, frame: Any, **kwargs: Any) -> Path:
    """Write a pandas DataFrame to CSV atomically."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def write_png(path: str | Path, image: Any) -> Path:
    """Write an RGB/RGBA/grey uint8 array or PIL image as PNG atomically."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def save_figure(path: str | Path, fig: Any, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    plt.close(fig)
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def unique_stems(paths: list[str | Path]) -> list[str]:
    """Output name stems for ``paths``: the file stem, or the stem prefixed with enough parent folders
    to tell inputs apart when two share a stem (``HE/x.png``, ``IHC/x.png`` -> ``HE_x``, ``IHC_x``)."""
    parts = [Path(p).parts for p in paths]
    depth = [1] * len(parts)

    def name(i: int) -> str:
        tail = list(parts[i][-depth[i] :])
        tail[-1] = Path(tail[-1]).stem
        return "_".join(tail)

    for _ in range(max((len(p) for p in parts), default=1)):
        seen: dict[str, list[int]] = {}
        for i in range(len(parts)):
            seen.setdefault(name(i), []).append(i)
        clashes = [ix for ix in seen.values() if len(ix) > 1]
        if not clashes:
            break
        for ix in clashes:
            for i in ix:
                depth[i] = min(depth[i] + 1, len(parts[i]))
    names = [name(i) for i in range(len(parts))]
    counts: dict[str, int] = {}
    for i, n in enumerate(names):  # identical paths given twice: number them
        counts[n] = counts.get(n, 0) + 1
        if counts[n] > 1:
            names[i] = f"{n}_{counts[n]}"
    return names
