"""Open whole slides and plain images alike, and read them at a requested resolution in µm/px.

The format is found from the file's content, never its extension (real data sets ship JPEG bytes
named ``.png``). Vendor formats go through OpenSlide, generic tiled TIFFs (successive-IFD or
SubIFD pyramids) through tifffile, plain images through Pillow. A region is
read from the nearest *finer* pyramid level and resized, so that a 2048-px overview of a 100k-px
slide touches only a small level.

Resolution (µm/px) is taken from a file's metadata only when it is plausible for a microscope scan
(:data:`PLAUSIBLE_MPP`). Trusted, in this order: OpenSlide's ``openslide.mpp-x`` (vendor metadata),
Aperio's ``MPP``, and TIFF ``XResolution`` with a ``ResolutionUnit`` of inch or centimetre. A value
outside the range is a writer's default rather than a measurement (72 dpi reads as 352.8 µm/px) and is
ignored, so that the user is asked for ``--mpp``; ``Slide.mpp_ignored`` says what was ignored. PNG
``pHYs`` and JPEG density are never read: they are almost always such a default.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import MissingMPPError, SlideError

#: Largest plain (non-pyramidal) image decoded into memory, in pixels (about 3 GB as RGB).
MAX_PLAIN_PIXELS = 1_000_000_000
#: Plain images up to this many pixels are decoded when opened, so that a corrupt file fails early.
EAGER_DECODE_PIXELS = 64_000_000
#: Smallest side, in pixels, of an image worth analysing.
MIN_SIDE = 16
#: Level-0 µm/px accepted from metadata: from a 100x oil objective (about 0.05) to a coarse overview
#: scan (20). Writers' dpi defaults fall far outside (72 dpi: 352.8 µm/px; 300 dpi: 84.7 µm/px).
PLAUSIBLE_MPP = (0.05, 20.0)

_MAGIC_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_MAGIC_PLAIN = {
    b"\x89PNG": "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"GIF8": "gif",
}


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its resolution."""

    width: int
    height: int
    downsample: float
    mpp: float | None


@dataclass
class SlideInfo:
    """What ``her2score info`` reports about a slide."""

    path: str
    format: str
    vendor: str
    width: int
    height: int
    mpp: float | None
    levels: list[Level] = field(default_factory=list)
    objective_power: float | None = None
    properties: dict[str, str] = field(default_factory=dict)
    #: Where ``mpp`` came from: ``given``, the metadata entry it was read from, or None when unknown.
    mpp_source: str | None = None
    #: A resolution found in the metadata but not trusted, and why (None when nothing was ignored).
    mpp_ignored: str | None = None


def sniff_format(path: str | Path) -> str:
    """Return the file's container format from its first bytes: ``tiff``, ``png``, ``jpeg``, ... .

    Raises:
        SlideError: the file is missing, empty, a folder, or of no known image format.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise SlideError(f"is a broken symbolic link (to {os.readlink(path)})", path) from None
        raise SlideError("file does not exist", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideError("is a symbolic link loop (it never reaches a file)", path) from None
        raise SlideError(f"cannot be read ({exc.strerror or exc})", path) from exc
    if stat.S_ISDIR(mode):
        if any(path.glob("*.dcm")):
            return "dicom-folder"
        raise SlideError("is a folder, not a slide or image file", path)
    if not stat.S_ISREG(mode):  # opening a FIFO would block until a writer comes, maybe forever
        raise SlideError(f"is a {file_kind(mode)}, not a regular file", path)
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SlideError(f"cannot be read ({exc.strerror or exc})", path) from exc
    if not head:
        raise SlideError("file is empty (0 bytes)", path)
    if head[:4] in _MAGIC_TIFF:
        return "tiff"
    for magic, name in _MAGIC_PLAIN.items():
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    vendor = _openslide_vendor(path)  # formats without a magic number of their own (MRXS, VMS, DICOM)
    if vendor:
        return vendor
    raise SlideError(
        f"not a recognised slide or image format ({describe_content(head)}); "
        "expected a whole-slide format readable by OpenSlide, TIFF, PNG or JPEG",
        path,
    )


def describe_content(head: bytes) -> str:
    """What a file's first bytes look like, in words: never the bytes themselves (a message must not
    echo the content of an arbitrary file into a terminal, a log or ``skipped_slides.csv``)."""
    known = {
        b"%PDF": "a PDF document",
        b"PK\x03\x04": "a ZIP archive or office document",
        b"\x1f\x8b": "gzip-compressed data",
        b"\x89HDF": "an HDF5 file",
        b"PAR1": "a Parquet table",
        b"\x80": "a Python pickle (e.g. a torch model)",
    }
    for magic, what in known.items():
        if head.startswith(magic):
            return f"looks like {what}"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 28:
        return "looks like a safetensors file (a model or feature bag, not an image)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary content"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return "looks like text"
    return "unknown binary content"


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in a user's words: file, folder, named pipe (FIFO), socket, device."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _openslide_vendor(path: Path) -> str | None:
    try:
        import openslide
    except ImportError:  # pragma: no cover - openslide is a dependency
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


class Slide:
    """A slide or image, read by resolution in µm/px.

    Coordinates (``location``, ``bounds``) are always level-0 pixels; sizes of returned images are
    pixels at the requested µm/px.

    Example:
        >>> slide = Slide.open("case.svs")                       # doctest: +SKIP
        >>> overview = slide.read_overview(mpp=8.0)              # doctest: +SKIP
        >>> patch = slide.read_region((1000, 2000), (512, 512), mpp=0.5)  # doctest: +SKIP
    """

    def __init__(
        self, path: Path, fmt: str, backend: _Backend, mpp: float | None, mpp_source: str | None = None
    ) -> None:
        """Take ownership of an opened ``backend``; it is closed here when the slide is refused."""
        self.path = path
        self.format = fmt
        self._backend = backend
        self.mpp = mpp
        self.mpp_source = mpp_source if mpp is not None else None
        self.mpp_ignored = backend.mpp_ignored
        self.width, self.height = backend.dimensions
        if min(self.width, self.height) < MIN_SIDE:
            backend.close()
            raise SlideError(
                f"image is too small ({self.width}x{self.height} px); at least {MIN_SIDE} px a side needed",
                path,
            )

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, mpp: float | None = None) -> Slide:
        """Open ``path`` by content. ``mpp`` overrides (or supplies) the level-0 µm/px.

        Raises:
            SlideError: the file cannot be opened as a slide or image; the message says why.
        """
        path = Path(path)
        fmt = sniff_format(path)
        if mpp is not None and not (0.01 <= float(mpp) <= 1000):
            raise SlideError(f"mpp={mpp} is outside the plausible range 0.01-1000 µm/px", path)
        layout = None
        if fmt == "tiff":
            try:
                layout = _inspect_tiff(path)
            except SlideError as exc:
                # A vendor TIFF dialect tifffile cannot parse is still fine when OpenSlide reads it;
                # a truncated or grayscale file is not.
                if exc.cause.startswith(("truncated", "grayscale")) or _openslide_vendor(path) is None:
                    raise
        backend: _Backend
        if fmt in ("png", "jpeg", "bmp", "gif", "webp"):
            backend = _PlainBackend(path)
        elif fmt == "dicom-folder":  # OpenSlide opens a DICOM slide from any file of its series
            first = sorted(path.glob("*.dcm"))[0]
            vendor = _openslide_vendor(first)
            if vendor is None:
                raise SlideError("folder of DICOM files that OpenSlide cannot read as a slide", path)
            backend = _OpenSlideBackend(first, vendor)
        else:
            vendor = _openslide_vendor(path)
            if layout is not None and layout.tiled and layout.plain_rgb and vendor in (None, "generic-tiff"):
                # Generic tiled RGB TIFFs are read with tifffile: OpenSlide's generic-tiff reader sees
                # only successive IFDs, not SubIFD pyramids (an overview would then decode level 0),
                # and tifffile decodes the tiles several times faster.
                backend = _TiffBackend(path, layout, vendor or "tiff")
            elif vendor is not None:
                backend = _OpenSlideBackend(path, vendor)
            elif fmt == "tiff":
                backend = _PlainBackend(path, layout)
            else:
                raise SlideError(f"{fmt} is recognised but cannot be opened", path)
        if mpp is not None:
            return cls(path, fmt, backend, float(mpp), "given")
        return cls(path, fmt, backend, backend.mpp, backend.mpp_source)

    def close(self) -> None:
        """Release the file handle."""
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.3f}" if self.mpp else "unknown"
        return f"Slide({self.path.name!r}, {self.width}x{self.height}, mpp={mpp}, {self.vendor})"

    # ------------------------------------------------------------------ metadata
    @property
    def vendor(self) -> str:
        return self._backend.vendor

    @property
    def levels(self) -> list[Level]:
        return [
            Level(w, h, ds, None if self.mpp is None else self.mpp * ds)
            for (w, h), ds in zip(
                self._backend.level_dimensions, self._backend.level_downsamples, strict=True
            )
        ]

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._backend.properties)

    def info(self) -> SlideInfo:
        """Summary of dimensions, levels, resolution and vendor."""
        power = self._backend.properties.get("openslide.objective-power")
        return SlideInfo(
            path=str(self.path),
            format=self.format,
            vendor=self.vendor,
            width=self.width,
            height=self.height,
            mpp=self.mpp,
            levels=self.levels,
            objective_power=float(power) if power else None,
            properties=self.properties,
            mpp_source=self.mpp_source,
            mpp_ignored=self.mpp_ignored,
        )

    def require_mpp(self) -> float:
        """Level-0 µm/px, or a clear error when neither the file nor the caller gave it."""
        if self.mpp is None:
            found = (
                f"the file's {self.mpp_ignored}" if self.mpp_ignored else "the file carries no µm/px metadata"
            )
            raise MissingMPPError(f"resolution unknown: {found}; pass mpp= (CLI: --mpp)", self.path)
        return self.mpp

    # ------------------------------------------------------------------ reading
    def best_level(self, mpp: float) -> int:
        """Index of the coarsest level that is still at least as fine as ``mpp``."""
        target_ds = mpp / self.require_mpp()
        best = 0
        for i, ds in enumerate(self._backend.level_downsamples):
            if ds <= target_ds * 1.001 and ds >= self._backend.level_downsamples[best]:
                best = i
        return best

    def read_bounds(self, bounds: tuple[int, int, int, int], mpp: float) -> np.ndarray:
        """Read the level-0 rectangle ``(x0, y0, x1, y1)`` at ``mpp`` µm/px as an RGB uint8 array.

        Parts outside the slide come back white (background).
        """
        x0, y0, x1, y1 = (int(v) for v in bounds)
        if x1 <= x0 or y1 <= y0:
            raise SlideError(f"empty region {bounds}", self.path)
        scale = self.require_mpp() / mpp
        out_w = max(1, round((x1 - x0) * scale))
        out_h = max(1, round((y1 - y0) * scale))
        return self._read(x0, y0, x1 - x0, y1 - y0, out_w, out_h, mpp)

    def read_region(self, location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        """Read ``size`` (w, h) output pixels at ``mpp`` µm/px whose top-left is level-0 ``location``."""
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise SlideError(f"empty region size {size}", self.path)
        factor = mpp / self.require_mpp()
        return self._read(
            int(location[0]), int(location[1]), math.ceil(w * factor), math.ceil(h * factor), w, h, mpp
        )

    def read_overview(
        self, mpp: float | None = None, max_size: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Read the whole slide at ``mpp`` µm/px, or fitted so that its longer side is ``max_size``.

        Returns the image and the µm/px it was read at. With both given, the coarser wins.
        """
        if mpp is None and max_size is None:
            raise ValueError("read_overview needs mpp or max_size")
        level0 = self.require_mpp()
        target = 0.0
        if mpp is not None:
            target = float(mpp)
        if max_size is not None:
            target = max(target, level0 * max(self.width, self.height) / max_size)
        target = max(target, level0)
        return self.read_bounds((0, 0, self.width, self.height), target), target

    def _read(self, x: int, y: int, w0: int, h0: int, out_w: int, out_h: int, mpp: float) -> np.ndarray:
        level = self.best_level(mpp)
        ds = self._backend.level_downsamples[level]
        lw = max(1, math.ceil(w0 / ds))
        lh = max(1, math.ceil(h0 / ds))
        if lw * lh > MAX_PLAIN_PIXELS or out_w * out_h > MAX_PLAIN_PIXELS:
            raise SlideError(
                f"region of {max(lw, out_w)}x{max(lh, out_h)} px at {mpp:g} µm/px is too large to read at "
                "once; read it in tiles or at a coarser µm/px",
                self.path,
            )
        try:
            region = self._backend.read(level, x, y, lw, lh)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                f"reading failed at {ds * self.require_mpp():.3g} µm/px ({type(exc).__name__}: {exc}); "
                "the file may be truncated or corrupt",
                self.path,
            ) from exc
        if region.shape[1] != out_w or region.shape[0] != out_h:
            region = _resize(region, out_w, out_h)
        return region


def _resize(region: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(region)
    shrinking = width < region.shape[1]
    resample = (
        Image.Resampling.BOX if shrinking and region.shape[1] >= 2 * width else Image.Resampling.BILINEAR
    )
    return np.asarray(img.resize((width, height), resample=resample, reducing_gap=None))


# ---------------------------------------------------------------------- backends
class _Backend:
    vendor: str = "unknown"
    dimensions: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    properties: dict[str, str]
    mpp: float | None = None
    mpp_source: str | None = None
    mpp_ignored: str | None = None

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class _OpenSlideBackend(_Backend):
    def __init__(self, path: Path, vendor: str) -> None:
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideError(f"OpenSlide cannot open this {vendor} file ({exc})", path) from exc
        try:
            self.path = path
            self.vendor = vendor
            self.dimensions = self._slide.dimensions
            self.level_dimensions = list(self._slide.level_dimensions)
            self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
            self.properties = dict(self._slide.properties)
            props = self.properties
            self.mpp, self.mpp_source, self.mpp_ignored = plausible_mpp(
                [
                    ("openslide.mpp-x", _float_or_none(props.get("openslide.mpp-x"))),
                    ("aperio.MPP", _float_or_none(props.get("aperio.MPP"))),
                    (
                        "TIFF resolution tags",
                        mpp_from_resolution_tags(
                            props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit")
                        ),
                    ),
                ]
            )
        except BaseException:
            self._slide.close()
            raise

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region((x, y), level, (w, h)))
        return _rgba_to_rgb(rgba)

    def close(self) -> None:
        self._slide.close()


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


#: TIFF ResolutionUnit, as a number (tifffile, Pillow) or a word (OpenSlide's ``tiff.ResolutionUnit``):
#: µm per unit. 1 ("none") has no physical meaning and is not listed.
_UM_PER_RESOLUTION_UNIT: dict[Any, float] = {2: 25400.0, 3: 1e4, "inch": 25400.0, "centimeter": 1e4}


def mpp_from_resolution_tags(x_resolution: Any, unit: Any) -> float | None:
    """µm/px from TIFF ``XResolution`` and ``ResolutionUnit``, as tifffile (a rational pair), Pillow or
    OpenSlide (a number or text) give them; None when either is missing or the unit is not physical.

    No plausibility check here: see :func:`plausible_mpp`.
    """
    if x_resolution is None or unit is None:
        return None
    try:
        per_unit = _UM_PER_RESOLUTION_UNIT.get(unit.strip().lower() if isinstance(unit, str) else int(unit))
        if per_unit is None:
            return None
        if isinstance(x_resolution, tuple):
            num, den = x_resolution
            pixels_per_unit = float(num) / float(den) if den else 0.0
        else:
            pixels_per_unit = float(x_resolution)
    except (TypeError, ValueError):
        return None
    return per_unit / pixels_per_unit if pixels_per_unit > 0 else None


def plausible_mpp(candidates: list[tuple[str, float | None]]) -> tuple[float | None, str | None, str | None]:
    """The first candidate ``(source, µm/px)`` inside :data:`PLAUSIBLE_MPP`.

    Returns ``(mpp, source, ignored)``: ``ignored`` describes the first value found but refused
    (None when none was), so that a missing resolution can be explained to the user.
    """
    lo, hi = PLAUSIBLE_MPP
    ignored = None
    for source, mpp in candidates:
        if mpp is None or not math.isfinite(mpp) or mpp <= 0:
            continue
        if lo <= mpp <= hi:
            return mpp, source, None
        if ignored is None:
            why = f" ({25400.0 / mpp:.0f} dpi: a writer's default, not a measurement)" if mpp > hi else ""
            ignored = (
                f"{source}: {mpp:.4g} µm/px{why}, outside the {lo:g}-{hi:g} µm/px of a microscope scan, "
                "ignored"
            )
    return None, None, ignored


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite on white: transparent pixels (outside the scanned area) become background."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    if rgba[..., 3].min() == 255:  # fully opaque, the usual case: no arithmetic needed
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha)) // 255
    return out.astype(np.uint8)


class _PlainBackend(_Backend):
    """A single-resolution image; its size is checked from the header before anything is decoded.

    Images up to :data:`EAGER_DECODE_PIXELS` are decoded at once, so that a truncated or corrupt file
    fails when opened rather than half-way through an analysis.
    """

    def __init__(self, path: Path, layout: _TiffLayout | None = None) -> None:
        self.path = path
        self.level_downsamples = [1.0]
        self.properties = {}
        self._array: np.ndarray | None = None
        if layout is not None:  # TIFF: the resolution tags as _inspect_tiff read them
            self.mpp, self.mpp_source, self.mpp_ignored = layout.mpp, layout.mpp_source, layout.mpp_ignored
        try:
            with _open_pil(path) as img:
                self.dimensions = img.size
                self.vendor = (img.format or "image").lower()
                self._mode = img.mode
        except SlideError:
            raise
        except Exception as exc:
            if layout is None:
                raise SlideError(
                    f"cannot be decoded as an image ({type(exc).__name__}: {exc})", path
                ) from exc
            # Pillow does not read every TIFF (e.g. 16-bit RGB, some compressions); tifffile will.
            self.dimensions = layout.levels[0]
            self.vendor = "tiff"
            self._mode = "tifffile"
        self.level_dimensions = [self.dimensions]
        w, h = self.dimensions
        check_decodable_size(w, h, path)
        if self._mode in _GRAY_MODES:
            raise SlideError(
                f"grayscale image (mode {self._mode}): brightfield RGB is needed to separate stains", path
            )
        if w * h <= EAGER_DECODE_PIXELS and min(w, h) >= MIN_SIDE:
            self._load()

    def _load(self) -> np.ndarray:
        if self._array is None:
            self._array = load_rgb(self.path)
        return self._array

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self._load()
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        sx0, sy0 = max(x, 0), max(y, 0)
        sx1, sy1 = min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = arr[sy0:sy1, sx0:sx1]
        return out


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_pil(path: Path) -> Any:
    """``PIL.Image.open`` (lazy: reads the header only), with Pillow's decompression-bomb limit no
    lower than our own :data:`MAX_PLAIN_PIXELS`; callers check the size with
    :func:`check_decodable_size` before decoding.

    Pillow's limit is a process-wide setting, so it is raised once, never lowered, and never flipped
    around a read (which would race with other threads). It stays a guard for other code in the
    process; an image past it is refused here with our own message naming the file.
    """
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PLAIN_PIXELS:
            Image.MAX_IMAGE_PIXELS = MAX_PLAIN_PIXELS
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise SlideError(
            f"plain image is too large to decode in memory ({exc}); convert it to a tiled pyramidal TIFF",
            path,
        ) from exc


def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_decodable_size(width: int, height: int, path: str | Path) -> None:
    """Refuse, before decoding, a plain image too large to hold in memory (its header gives the size).

    Raises:
        SlideError: over :data:`MAX_PLAIN_PIXELS`, or needing more than half of this machine's memory.
    """
    pixels = int(width) * int(height)
    needed = pixels * 3 * 2  # the decoded RGB array plus one working copy
    memory = _physical_memory_bytes()
    if pixels > MAX_PLAIN_PIXELS or (memory is not None and needed > memory // 2):
        have = f"; this machine has {memory / 2**30:.1f} GiB" if memory else ""
        raise SlideError(
            f"plain image of {width}x{height} px is too large to decode in memory "
            f"(needs about {needed / 2**30:.1f} GiB{have}, limit {MAX_PLAIN_PIXELS / 1e6:.0f} Mpx); "
            "convert it to a tiled pyramidal TIFF",
            path,
        )


@dataclass(frozen=True)
class _TiffLayout:
    """What tifffile reads from a TIFF's header: the main image's pyramid and how it is stored."""

    levels: list[tuple[int, int]]  # (width, height) per level, finest first
    tiled: bool
    mpp: float | None
    dtype: str
    plain_rgb: bool  # interleaved RGB(A) or YCbCr, 8 or 16 bits: what the tifffile backend decodes
    mpp_source: str | None = None
    mpp_ignored: str | None = None


class _QuietWhileInspecting(logging.Filter):
    """Drops tifffile's log records from a thread inside :func:`_inspect_tiff`: a corrupt IFD is
    reported there as one error. Installed once; other threads and other code log as usual."""

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


_QUIET_TIFFFILE = _QuietWhileInspecting()
logging.getLogger("tifffile").addFilter(_QUIET_TIFFFILE)


def _inspect_tiff(path: Path) -> _TiffLayout:
    """Read a TIFF's structure (no pixel data) and refuse truncated, grayscale or odd files."""
    import tifffile

    size = path.stat().st_size
    _QUIET_TIFFFILE.active.on = True
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            pages = [lvl.pages[0] for lvl in series.levels]
            pages = [p for p in pages if p is not None]
            if not pages:
                raise SlideError("TIFF holds no image", path)
            first = pages[0]
            end = max(
                (
                    int(o) + int(c)
                    for p in pages
                    for o, c in zip(p.dataoffsets, p.databytecounts, strict=False)
                ),
                default=0,
            )
            levels = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
            samples = int(first.samplesperpixel)
            photometric = int(first.photometric)
            dtype = str(first.dtype)
            tiled = all(p.is_tiled for p in pages)
            plain_rgb = all(
                int(p.planarconfig) == 1
                and int(p.photometric) in (2, 6)  # RGB, YCbCr
                and int(p.samplesperpixel) in (3, 4)
                and str(p.dtype) in ("uint8", "uint16")
                for p in pages
            )
            x_res, unit = first.tags.get("XResolution"), first.tags.get("ResolutionUnit")
            resolution = plausible_mpp(
                [
                    (
                        "TIFF resolution tags",
                        mpp_from_resolution_tags(
                            None if x_res is None else x_res.value, None if unit is None else unit.value
                        ),
                    )
                ]
            )
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(
            f"TIFF structure is unreadable ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt",
            path,
        ) from exc
    finally:
        _QUIET_TIFFFILE.active.on = False
    if end > size:
        raise SlideError(
            f"truncated TIFF: image data runs to byte {end:,} but the file ends at {size:,} bytes", path
        )
    if samples == 1 and photometric in (0, 1):  # MINISWHITE, MINISBLACK
        raise SlideError(f"grayscale TIFF ({dtype}): brightfield RGB is needed to separate stains", path)
    if samples == 2:
        raise SlideError("grayscale TIFF with alpha: brightfield RGB is needed to separate stains", path)
    mpp, mpp_source, mpp_ignored = resolution
    return _TiffLayout(
        levels=levels,
        tiled=tiled,
        mpp=mpp,
        dtype=dtype,
        plain_rgb=plain_rgb,
        mpp_source=mpp_source,
        mpp_ignored=mpp_ignored,
    )


class _TiffBackend(_Backend):
    """Generic tiled RGB TIFFs (successive-IFD or SubIFD pyramids), read with tifffile.

    Only the tiles that overlap a requested region are read and decoded.
    """

    def __init__(self, path: Path, layout: _TiffLayout, vendor: str = "generic-tiff") -> None:
        import tifffile

        self.path = path
        self.vendor = vendor
        self._lock = threading.Lock()
        self._pool: Any = None  # decoding threads, started at the first read that needs them
        try:
            self._tif = tifffile.TiffFile(str(path))
        except Exception as exc:
            raise SlideError(f"TIFF cannot be opened ({type(exc).__name__}: {exc})", path) from exc
        try:
            self._pages = [lvl.pages[0] for lvl in self._tif.series[0].levels]
        except Exception as exc:
            self._tif.close()
            raise SlideError(f"TIFF pyramid cannot be read ({type(exc).__name__}: {exc})", path) from exc
        self.dimensions = layout.levels[0]
        self.level_dimensions = list(layout.levels)
        w0 = layout.levels[0][0]
        self.level_downsamples = [w0 / w for w, _ in layout.levels]
        self.mpp, self.mpp_source, self.mpp_ignored = layout.mpp, layout.mpp_source, layout.mpp_ignored
        self.properties = {"tiff.levels": str(len(layout.levels)), "tiff.dtype": layout.dtype}
        if self.mpp is not None:
            self.properties["tiff.mpp"] = f"{self.mpp:.6g}"

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        page = self._pages[level]
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        lw_img, lh_img = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = math.ceil(lw_img / tw)
        rows = range(max(0, ly // th), min(math.ceil(lh_img / th), math.ceil((ly + h) / th)))
        cols = range(max(0, lx // tw), min(across, math.ceil((lx + w) / tw)))
        # Read the compressed tiles in file order (one file handle), then decode them in threads:
        # the codecs release the GIL.
        jobs = []
        fh = self._tif.filehandle
        with self._lock:  # one shared file position
            for ty in rows:
                for tx in cols:
                    index = ty * across + tx
                    count = int(page.databytecounts[index])
                    if count == 0:  # a tile never written: background
                        continue
                    fh.seek(int(page.dataoffsets[index]))
                    jobs.append((tx, ty, index, fh.read(count)))

        def paste(job: tuple[int, int, int, bytes]) -> None:
            tx, ty, index, data = job
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            tile = _to_rgb8(np.asarray(tile).reshape(th, tw, -1))
            x0, y0 = max(lx, tx * tw), max(ly, ty * th)  # overlap with the window, in level px
            x1, y1 = min(lx + w, (tx + 1) * tw, lw_img), min(ly + h, (ty + 1) * th, lh_img)
            if x1 > x0 and y1 > y0:
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = tile[
                    y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw
                ]

        if len(jobs) <= 2:
            for job in jobs:
                paste(job)
        else:
            list(self._decoders().map(paste, jobs))
        return out

    def _decoders(self) -> Any:
        """One pool of decoding threads per open slide, not one per read.

        Measured on 2 shared cores, 150 reads of 1024-px regions (9 JPEG tiles each) of an 80k x 60k
        slide: pool per slide 0.69 s, pool per read 0.82 s, sequential decoding 0.93 s. tifffile's
        own region reader (``aszarr``) needs the zarr package, which her2score does not depend on.
        """
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
                self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tiff-decode")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._tif.close()


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Any RGB(A) array of 8 or 16 bits (or floats in 0-1) as RGB uint8, RGBA composited on white."""
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer):
            arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255.0).round().astype(np.uint8)
        else:
            arr = (np.clip(arr, 0, 1) * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 4:
        return _rgba_to_rgb(arr)
    if arr.shape[-1] != 3:
        raise ValueError(f"{arr.shape[-1]} samples per pixel: RGB needed")
    return arr


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode a plain image file into RGB uint8, whatever its mode.

    RGBA is composited on white, palette images expanded, 16-bit RGB scaled to 8 bits; grayscale
    is refused (stain separation needs colour), and so is an image too large for memory, from its
    header before decoding. Truncated or corrupt files raise :class:`SlideError`.
    """
    path = Path(path)
    sniff_format(path)
    arr: np.ndarray | None = None
    try:
        with _open_pil(path) as img:
            check_decodable_size(*img.size, path)
            mode = img.mode
            if mode in _GRAY_MODES:
                raise SlideError(f"grayscale image (mode {mode}): brightfield RGB is needed", path)
            img.load()
            if mode in ("P", "PA"):
                img = img.convert("RGBA")
                mode = "RGBA"
            if mode in ("RGB", "RGBA"):
                arr = np.asarray(img)
            elif mode in ("CMYK", "YCbCr", "RGBX", "RGBa", "LAB", "HSV"):
                arr = np.asarray(img.convert("RGB"))
    except SlideError:
        raise
    except Exception as exc:
        if sniff_format(path) != "tiff":
            raise SlideError(
                f"cannot be decoded ({type(exc).__name__}: {exc}); the file may be truncated or corrupt", path
            ) from exc
    if arr is None:  # TIFFs Pillow cannot read or convert, e.g. 16-bit RGB
        arr = _load_with_tifffile(path)
    return np.ascontiguousarray(_to_rgb8(arr))


def _load_with_tifffile(path: Path) -> np.ndarray:
    """Decode TIFFs Pillow cannot (16-bit RGB and friends); scaling to 8 bits is left to the caller."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            check_decodable_size(int(page.imagewidth), int(page.imagelength), path)
            arr = page.asarray()
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(
            f"cannot be decoded ({type(exc).__name__}: {exc}); the file may be truncated or corrupt", path
        ) from exc
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        raise SlideError(f"grayscale image ({arr.dtype}): brightfield RGB is needed", path)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise SlideError(f"unsupported image layout {arr.shape} {arr.dtype}: RGB needed", path)
    return arr


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide or image by content; see :meth:`Slide.open`."""
    return Slide.open(path, mpp=mpp)
