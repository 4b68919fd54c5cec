"""Errors that reach a user: each names the file (when there is one) and the cause."""

from __future__ import annotations

from pathlib import Path


class Her2ScoreError(Exception):
    """Base class for expected failures: the CLI prints them without a traceback."""

    def __init__(self, cause: str, path: str | Path | None = None) -> None:
        self.cause = cause
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {cause}" if self.path is not None else cause)


class SlideError(Her2ScoreError):
    """A slide or image cannot be opened or read."""


class MissingMPPError(SlideError):
    """The resolution (µm/px) is unknown and none was given."""


class NoTissueError(SlideError):
    """No tissue was found on the slide."""


class StainError(Her2ScoreError):
    """The image does not carry the expected stain (e.g. no DAB on an H&E image)."""


class ManifestError(Her2ScoreError):
    """A manifest CSV is malformed or inconsistent."""


class CheckpointError(Her2ScoreError):
    """A model checkpoint is missing, corrupted or not a her2score checkpoint."""


class ConfigError(Her2ScoreError):
    """A configuration value is invalid."""


class OutputError(Her2ScoreError):
    """An output path cannot be written: it exists as the wrong kind, lies under a file, or is not
    writable. Found before any work starts."""


class InputError(Her2ScoreError):
    """An input file cannot be used: missing, a folder, a named pipe or device, unreadable or empty."""
