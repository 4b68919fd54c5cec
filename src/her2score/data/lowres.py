"""Low-resolution whole-tissue images: the input of ``lowres-*`` models.

A slide is read at ``mpp`` µm/px (default 8; 8-16 suits the IPD-Breast method), cropped to the
bounding box of its tissue, fitted into a ``size`` x ``size`` square (aspect kept, white padding) and
cached as PNG keyed by the slide file (its size, modification time and a hash of sampled content) and
the parameters, so that epochs and repeated runs never re-read slides while a changed file is never
served a stale image. The cache lives in :func:`default_cache_dir` unless a folder is given. Slides
that fail to open or hold no tissue are collected, not fatal.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from her2score.errors import Her2ScoreError, NoTissueError, SlideError
from her2score.paths import cache_dir as _named_cache_dir
from her2score.slide.tissue import tissue_bbox, tissue_mask

#: Bump when the preparation changes, so stale cache entries are not reused.
PREP_VERSION = 2
MPP_RANGE = (1.0, 64.0)


@dataclass(frozen=True)
class LowResParams:
    """How a slide becomes a model input: resolution, square side, margin around the tissue."""

    mpp: float = 8.0
    size: int = 224
    margin: float = 0.02
    upscale: bool = False

    def __post_init__(self) -> None:
        from her2score.errors import ConfigError

        if not MPP_RANGE[0] <= self.mpp <= MPP_RANGE[1]:
            raise ConfigError(f"low-resolution mpp {self.mpp} outside {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px")
        if not 16 <= self.size <= 4096:
            raise ConfigError(f"input size {self.size} px outside 16-4096")


@dataclass
class Failure:
    """A slide left out, and why."""

    slide: str
    cause: str


def content_hash(path: str | Path, sample: int = 1 << 16) -> str:
    """A hash of a file's size and sampled bytes (start, middle, end): fast on multi-GB slides."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as fh:
        for offset in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
            fh.seek(offset)
            digest.update(fh.read(sample))
    return digest.hexdigest()


def cache_key(path: str | Path, params: LowResParams, slide_mpp: float | None = None) -> str:
    """Cache key: the file (size, modification time in ns, sampled content) + preparation parameters
    + preparation version.

    The sampled hash alone missed a slide rewritten in place with the same size and the same sampled
    bytes (e.g. a re-exported region); the modification time catches that, the hash a file replaced
    by one with an old modification time (a restored backup).
    """
    st = Path(path).stat()
    spec = json.dumps(
        {
            **asdict(params),
            "slide_mpp": slide_mpp,
            "v": PREP_VERSION,
            "file_bytes": st.st_size,
            "file_mtime_ns": st.st_mtime_ns,
        },
        sort_keys=True,
    )
    return hashlib.blake2b((content_hash(path) + spec).encode(), digest_size=16).hexdigest()


def default_cache_dir() -> Path:
    """Where low-resolution images are cached by default: ``her2score.paths.cache_dir("lowres")``."""
    return _named_cache_dir("lowres")


def fit_square(rgb: np.ndarray, size: int, upscale: bool = False) -> np.ndarray:
    """Resize keeping aspect so the longer side fits ``size``, centred on white."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if not upscale:
        scale = min(scale, 1.0)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS))
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = rgb
    return out


def lowres_image(path: str | Path, params: LowResParams, slide_mpp: float | None = None) -> np.ndarray:
    """Read ``path`` and return its tissue as a ``size`` x ``size`` RGB uint8 image (no cache).

    Raises:
        SlideError: the slide cannot be opened or read. NoTissueError: no tissue was found.
    """
    from her2score.slide import open_slide

    with open_slide(path, mpp=slide_mpp) as slide:
        rgb, read_mpp = slide.read_overview(mpp=params.mpp)
    box = tissue_bbox(tissue_mask(rgb, mpp=read_mpp))
    if box is None:
        raise NoTissueError(f"no tissue found at {params.mpp:g} µm/px", path)
    x0, y0, x1, y1 = box
    pad = round(params.margin * max(x1 - x0, y1 - y0))
    h, w = rgb.shape[:2]
    crop = rgb[max(0, y0 - pad) : min(h, y1 + pad), max(0, x0 - pad) : min(w, x1 + pad)]
    return fit_square(np.ascontiguousarray(crop), params.size, params.upscale)


def load_or_prepare(
    path: str | Path, params: LowResParams, cache_dir: str | Path | None, slide_mpp: float | None = None
) -> np.ndarray:
    """``lowres_image`` through the on-disk cache (PNG per slide and parameter set)."""
    if cache_dir is None:
        return lowres_image(path, params, slide_mpp)
    from PIL import Image

    from her2score.io import write_png

    if not Path(path).is_file():
        from her2score.slide.reader import sniff_format

        sniff_format(path)  # says what is there instead (a folder, a named pipe, a link loop), unopened
        raise SlideError("file does not exist", path)
    entry = Path(cache_dir) / f"{cache_key(path, params, slide_mpp)}.png"
    if entry.is_file():
        try:
            with Image.open(entry) as img:
                arr = np.asarray(img.convert("RGB"))
            if arr.shape == (params.size, params.size, 3):
                return arr
        except OSError:
            pass  # a damaged cache entry is simply rebuilt
    arr = lowres_image(path, params, slide_mpp)
    write_png(entry, arr)
    return arr


def prepare_slides(
    slides: list[str | Path],
    params: LowResParams,
    cache_dir: str | Path | None,
    slide_mpps: list[float | None] | None = None,
    workers: int = 0,
    quiet: bool = False,
    description: str = "Reading slides",
) -> tuple[dict[int, np.ndarray], list[Failure]]:
    """Prepare many slides; returns ``{position: image}`` and the failures (never raises on one slide)."""
    from her2score.progress import progress_bar

    mpps = slide_mpps or [None] * len(slides)

    def one(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, load_or_prepare(slides[i], params, cache_dir, mpps[i]), None
        except Her2ScoreError as exc:
            return i, None, exc.cause
        except Exception as exc:  # a broken file must not stop a cohort
            return i, None, f"{type(exc).__name__}: {exc}"

    images: dict[int, np.ndarray] = {}
    failures: list[Failure] = []
    with progress_bar(quiet) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task(description, total=len(slides))
        for i, img, cause in pool.map(one, range(len(slides))):
            if img is None:
                failures.append(Failure(str(slides[i]), cause or "unknown error"))
            else:
                images[i] = img
            bar.advance(task)
    return images, failures
