"""Where her2score keeps things on disk: one cache location for every command."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HER2SCORE_CACHE``, else ``$XDG_CACHE_HOME/her2score``, else ``~/.cache/her2score``."""
    explicit = os.environ.get("HER2SCORE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "her2score"


def cache_dir(name: str) -> Path:
    """A named sub-cache (``lowres``, ``features``, ...) under :func:`cache_root`; not created here."""
    return cache_root() / name
