"""Checks of the paths a command is given, made before any work starts, so that a wrong ``--out`` is
said at once (not after an hour of inference) in one line ``error: PATH: cause``.

Nothing here opens a file for reading: a named pipe (FIFO) would block until a writer comes.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from her2score.errors import Her2ScoreError, InputError, OutputError
from her2score.slide.reader import file_kind

if TYPE_CHECKING:
    from rich.console import Console

#: Level-0 µm/px accepted from ``--mpp``: finer than a 100x oil objective (about 0.05 µm/px) is not a
#: microscope scan, and a small image would be read as a few µm of tissue (or blown up to billions of px).
MPP_OPTION_RANGE = (0.05, 1000.0)


def _stat(path: Path, error: type[Her2ScoreError]) -> os.stat_result | None:
    """``path``'s stat (following links), or None when nothing is there (or a parent is a file).

    Raises ``error`` for a symbolic link loop, a broken link and a path that cannot be looked at.
    """
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise error(f"is a broken symbolic link (to {os.readlink(path)})", path) from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error("is a symbolic link loop (it never reaches a file)", path) from None
        raise error(f"cannot be looked at ({exc.strerror or exc})", path) from None


def _check_creatable(path: Path) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    ancestor = path.absolute().parent
    while True:
        st = _stat(ancestor, OutputError)
        if st is not None or ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if st is None:  # pragma: no cover - the root always exists
        raise OutputError("cannot be created (no existing parent folder)", path)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot be created: {ancestor} is a {file_kind(st.st_mode)}, not a folder", path)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot be created: folder {ancestor} is not writable", path)


def check_output_dir(path: Path | None, option: str = "--out") -> Path | None:
    """Refuse an output folder that cannot be one: an existing file, a link loop, a path under a
    file, a folder that is not writable. Creates nothing.

    Raises:
        OutputError: naming ``path`` and the cause.
    """
    if path is None:
        return None
    st = _stat(path, OutputError)
    if st is None:
        _check_creatable(path)
    elif not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"is a {file_kind(st.st_mode)}, not a folder; {option} takes a folder", path)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"folder is not writable ({option})", path)
    return path


def check_output_file(path: Path, option: str = "--out") -> Path:
    """Refuse an output file that cannot be written: an existing folder, named pipe or device, a link
    loop, a path under a file, a folder that is not writable. Outputs are written to a temporary name
    beside the target and renamed, so the folder (not the file) must be writable.

    Raises:
        OutputError: naming ``path`` and the cause.
    """
    st = _stat(path, OutputError)
    if st is None:
        _check_creatable(path)
        return path
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"is a folder; {option} takes a file name (e.g. {path / 'out.csv'})", path)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"is a {file_kind(st.st_mode)}, not a regular file; {option} takes a file", path)
    folder = path.absolute().parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot be replaced: folder {folder} is not writable", path)
    return path


def check_input_file(
    path: Path | None,
    what: str,
    error: type[Her2ScoreError] = InputError,
    folder_hint: str = "",
    allow_empty: bool = False,
) -> Path | None:
    """Refuse an input that is not a readable regular file, saying what it is (missing, a folder, a
    named pipe, a link loop, empty), without opening it.

    ``what`` names the input in messages ("manifest", "model", ...); ``folder_hint`` is added when a
    folder is given.
    """
    if path is None:
        return None
    st = _stat(path, error)
    if st is None:
        raise error(f"{what} file not found", path)
    if stat.S_ISDIR(st.st_mode):
        raise error(f"is a folder, not a {what} file{folder_hint}", path)
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block until a writer comes
        raise error(f"is a {file_kind(st.st_mode)}, not a regular {what} file", path)
    if not os.access(path, os.R_OK):
        raise error(f"{what} file cannot be read (permission denied)", path)
    if st.st_size == 0 and not allow_empty:
        raise error(f"{what} file is empty (0 bytes)", path)
    return path


def check_mpp(value: float | None) -> float | None:
    """Typer callback of ``--mpp``: a finite, positive resolution a microscope can give."""
    if value is None:
        return None
    from her2score.errors import ConfigError

    lo, hi = MPP_OPTION_RANGE
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--mpp {value:g} is not a resolution: give the level-0 µm/px, a positive number")
    if value < lo:
        raise ConfigError(
            f"--mpp {value:g} µm/px is implausible: finer than any microscope scan (a 100x oil objective "
            f"gives about {lo:g}); at that resolution an image would hold a few µm of tissue"
        )
    if value > hi:
        raise ConfigError(f"--mpp {value:g} µm/px is implausible (more than {hi:g} µm per pixel)")
    return value


def make_console(stderr: bool = True) -> Console:
    """A rich console on which text is text: file names holding ``[/]``, ``[copy]`` or ``:x:`` are
    printed as they are (no markup, no emoji, no highlighting); colour comes from ``style=`` only."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, markup=False, emoji=False, highlight=False)
