"""Atomic output: everything is written to a temporary name beside the target, then renamed.

Files are created with mode ``0o666`` filtered by the user's umask (as ``open()`` would), flushed to
disk before the rename and the rename itself flushed (best effort), so that a crash leaves either the
old file or the new one, never a half-written one, and outputs are as readable as any other file the
user writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success.

    A crash or an exception leaves no half-written file under the final name. The temporary file
    exists (empty) when the body starts; writers may overwrite or replace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(path)
    mode = stat.S_IMODE(tmp_path.stat().st_mode)  # 0o666 & ~umask, as the kernel applied it
    try:
        yield tmp_path
        if stat.S_IMODE(tmp_path.stat().st_mode) != mode:
            os.chmod(tmp_path, mode)  # a writer that replaced the file (safetensors does) got its own mode
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _create_temp(path: Path) -> Path:
    """A new, empty file beside ``path``, created like ``open(..., "x")``: mode 0o666 & ~umask.

    (``tempfile.mkstemp`` creates 0o600 whatever the umask, which made every output private.)
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")  # pragma: no cover


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform or file system can open or sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write strict JSON atomically (indented, keys in insertion order).

    NaN and infinities, which JSON has no words for, are written as ``null`` (also inside numpy
    scalars and arrays); numpy numbers become plain numbers and paths strings.
    """
    return write_text(path, json.dumps(to_json_safe(obj), indent=2, allow_nan=False) + "\n")


def to_json_safe(obj: Any) -> Any:
    """``obj`` with numpy values as Python ones, paths as strings and non-finite floats as ``None``.

    Raises:
        TypeError: something JSON cannot hold (named by its type).
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_json_key(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    import numpy as np

    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json_safe(obj.item())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json_key(key: Any) -> Any:
    """Keys as ``json.dumps`` takes them; numpy scalars (e.g. a class index) as Python ones."""
    if isinstance(key, (str, int, float, bool)) or key is None:
        return key
    return to_json_safe(key)


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


# ------------------------------------------------------------------------------------------- output folders
#: The lock file a run holds in its output folder (see :func:`output_lock`).
LOCK_NAME = ".her2score.lock"
#: The files a run wrote into its output folder (see :func:`recorded_outputs`).
OUTPUTS_NAME = ".her2score-outputs.json"
_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): a process may re-enter its own lock


@contextlib.contextmanager
def output_lock(folder: str | Path, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder/name`` (an ``fcntl.flock``) while a run writes into ``folder``; yield the folder.

    A second run into the same folder (another process) is refused at once with a
    :class:`~her2score.errors.ConfigError` naming the holder's pid. The kernel drops the lock when its
    process dies, however it dies, so a lock file left by a killed run (a dead pid) is simply taken
    over. The lock file is removed on release. The same process may nest locks on one folder. Where
    ``fcntl`` is missing (Windows) runs are not locked.
    """
    from her2score.errors import ConfigError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("is not a folder (an output folder was expected)", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder ({exc.strerror or exc})", folder) from None
    path = (folder / name).absolute()
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield folder
        finally:
            fd, depth = _held[path]
            _held[path] = (fd, depth - 1)
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    try:
        fd = _acquire(path, fcntl)
    except OSError as exc:
        raise ConfigError(f"cannot write here ({exc.strerror or exc})", folder) from None
    if fd is None:
        raise ConfigError(
            f"another her2score run is writing here ({_holder(path)}); wait for it or choose another --out",
            folder,
        )
    _held[path] = (fd, 1)
    try:
        yield folder
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking: a run that opened the old file retries on the new one
        os.close(fd)


def _acquire(path: Path, fcntl: Any) -> int | None:
    """An open, locked descriptor of ``path`` holding our pid, or None when another process holds it."""
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder released and removed the file between our open and our lock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    return None  # pragma: no cover - a lock changing hands twenty times in a row


def _holder(path: Path) -> str:
    try:
        pid = int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return "pid unknown"
    return f"pid {pid}"


def recorded_outputs(folder: str | Path) -> list[Path]:
    """The files an earlier her2score run recorded as written into ``folder`` (that still exist)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / OUTPUTS_NAME).read_text(encoding="utf-8"))
        names = [str(n) for n in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    # only plain names inside the folder: a damaged record must never point elsewhere
    safe = [n for n in names if n and Path(n).name == n and n not in (".", "..")]
    return [folder / n for n in safe if (folder / n).is_file()]


def record_outputs(folder: str | Path, names: list[str], command: str) -> Path:
    """Record (atomically) the files this run has written into ``folder``, by name."""
    return write_json(Path(folder) / OUTPUTS_NAME, {"command": command, "files": sorted(set(names))})


def remove_recorded_outputs(folder: str | Path, keep: Iterable[str] = ()) -> list[Path]:
    """Delete the files an earlier run recorded in ``folder`` (except ``keep``); return those removed."""
    kept = set(keep)
    removed = []
    for path in recorded_outputs(folder):
        if path.name not in kept:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
