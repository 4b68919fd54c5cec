"""Tile features of a cohort, cached per slide: one safetensors file per slide that the ``bag`` input
kind reads (``features`` (N, D) float32, ``coords`` (N, 2) level-0 px of each tile's top-left corner).

A file is named by a key of the slide's content (size, modification time, sampled bytes), the encoder
(its ``key``: weights, seed, version) and the tiling (µm/px, tile size, minimum tissue): the same slide,
encoder and tiling reuse the file; anything else writes a new one. Each file is written atomically, so
a killed extraction resumes where it stopped, and a slide that cannot be read is listed and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import Her2ScoreError, NoTissueError, SlideError
from her2score.features.tiles import read_tiles, tissue_tiles

#: Bump when the tiling or the file layout changes, so that old caches are not reused.
FEATURES_VERSION = 1
COLUMNS = ("slide", "features", "n_tiles", "status", "cause", "seconds")


def feature_key(
    slide: str | Path,
    encoder_key: str,
    mpp: float,
    tile_size: int,
    min_tissue: float = 0.25,
    slide_mpp: float | None = None,
) -> str:
    """The cache key of a slide's features: its content (size, mtime in ns, sampled bytes), the
    encoder's key, the tiling and the level-0 µm/px given for it, if any."""
    from her2score.data.lowres import content_hash

    st = Path(slide).stat()
    spec = json.dumps(
        {
            "encoder": encoder_key,
            "mpp": float(mpp),
            "tile_size": int(tile_size),
            "min_tissue": float(min_tissue),
            "slide_mpp": slide_mpp,
            "v": FEATURES_VERSION,
            "file_bytes": st.st_size,
            "file_mtime_ns": st.st_mtime_ns,
        },
        sort_keys=True,
    )
    return hashlib.blake2b((content_hash(slide) + spec).encode(), digest_size=16).hexdigest()


def feature_file(out_dir: str | Path, slide: str | Path, key: str) -> Path:
    """Where a slide's features for ``key`` live: ``OUT/<slide stem>.<key[:16]>.safetensors``."""
    stem = Path(slide).name.split(".")[0] or "slide"
    return Path(out_dir) / f"{stem}.{key[:16]}.safetensors"


def count_tiles(path: str | Path) -> int:
    """The number of tiles in a feature file (read from its header)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return int(fh.get_slice("features").get_shape()[0])


def encode_slide(
    slide_path: str | Path,
    encoder: Any,
    mpp: float = 1.0,
    tile_size: int = 224,
    min_tissue: float = 0.25,
    batch_size: int = 32,
    slide_mpp: float | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tile one slide over tissue and encode its tiles: ``(features (N, D) float32, coords (N, 2) level-0
    px, the slide's level-0 µm/px)``. This is the per-slide work of a patch pipeline (the tissue mask,
    the tile reads, the encoder), nothing cached or written. ``SlideError`` when the slide cannot be
    read or holds no tile with enough tissue."""
    from her2score.slide import open_slide

    with open_slide(slide_path, mpp=slide_mpp) as slide:
        tiles = tissue_tiles(slide, mpp, tile_size, min_tissue)
        if not tiles:
            raise NoTissueError(
                f"no {tile_size}-px tile at {mpp:g} µm/px holds {min_tissue:.0%} tissue", slide_path
            )
        features = np.empty((len(tiles), encoder.dim), dtype=np.float32)
        coords = np.array([(t.x, t.y) for t in tiles], dtype=np.float32)
        done = 0
        for batch, chunk in read_tiles(slide, tiles, batch_size):
            out = np.asarray(encoder(batch), dtype=np.float32)
            if out.shape != (len(chunk), encoder.dim):
                raise ValueError(
                    f"encoder {encoder.name} returned {out.shape}, not ({len(chunk)}, {encoder.dim})"
                )
            features[done : done + len(chunk)] = out
            done += len(chunk)
            if on_tiles is not None:
                on_tiles(done, len(tiles))
        level0 = slide.require_mpp()
    if not np.isfinite(features).all():
        raise SlideError(f"encoder {encoder.name} gave non-finite features", slide_path)
    return features, coords, level0


def write_features(
    out_path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    encoder: Any,
    slide_path: str | Path,
    mpp: float,
    tile_size: int,
    min_tissue: float,
    level0: float,
) -> Path:
    """Write a slide's feature file atomically, with what made it in the metadata."""
    from safetensors.numpy import save_file

    from her2score import __version__
    from her2score.io import atomic_path

    metadata = {
        "encoder": encoder.name,
        "encoder_key": encoder.key,
        "mpp": f"{mpp:g}",
        "tile_size": str(tile_size),
        "min_tissue": f"{min_tissue:g}",
        "slide": str(slide_path),
        "slide_mpp": f"{level0:g}",
        "her2score_version": __version__,
        "features_version": str(FEATURES_VERSION),
    }
    with atomic_path(out_path) as tmp:
        save_file({"features": features, "coords": coords}, str(tmp), metadata=metadata)
    return Path(out_path)


def extract_slide(
    slide_path: str | Path,
    encoder: Any,
    out_path: str | Path,
    mpp: float = 1.0,
    tile_size: int = 224,
    min_tissue: float = 0.25,
    batch_size: int = 32,
    slide_mpp: float | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> int:
    """:func:`encode_slide` then :func:`write_features`; the number of tiles."""
    features, coords, level0 = encode_slide(
        slide_path, encoder, mpp, tile_size, min_tissue, batch_size, slide_mpp, on_tiles
    )
    write_features(out_path, features, coords, encoder, slide_path, mpp, tile_size, min_tissue, level0)
    return len(features)


def extract_features(
    slides: Iterable[str | Path],
    out_dir: str | Path,
    encoder: Any,
    mpp: float = 1.0,
    tile_size: int = 224,
    min_tissue: float = 0.25,
    batch_size: int = 32,
    slide_mpp: float | None = None,
    quiet: bool = False,
    warm_up: bool = False,
) -> Any:
    """Feature files for ``slides`` under ``out_dir``, reusing those already there.

    Returns a frame with one row per slide: ``slide``, ``features`` (its file, empty when it failed),
    ``n_tiles``, ``status`` (``extracted``, ``cached`` or ``failed``), ``cause`` (why it failed) and
    ``seconds``: for an extracted slide the time of :func:`encode_slide` alone (tissue mask, tile reads,
    encoder: the per-slide cost of a patch pipeline; not the cache key nor the file write), otherwise
    the time the lookup or the failure took. A slide that cannot be read is a ``failed`` row, not an
    error; an interruption leaves every finished slide's file in place, so running again does only the
    rest. ``warm_up`` encodes the first slide to extract once, untimed, before the timed one: the first
    network call and the first read allocate and import, a one-off cost that is not any slide's.
    """
    import pandas as pd

    from her2score.progress import progress_bar

    slides = [Path(s) for s in slides]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with progress_bar(quiet) as bar:
        slide_task = bar.add_task(f"Features ({encoder.name}, {mpp:g} µm/px)", total=len(slides))
        tile_task = bar.add_task("Tiles", total=None)
        for path in slides:
            start, seconds = time.perf_counter(), None
            row: dict[str, Any] = {"slide": str(path), "features": "", "n_tiles": 0, "cause": ""}
            try:
                target = feature_file(
                    out_dir, path, feature_key(path, encoder.key, mpp, tile_size, min_tissue, slide_mpp)
                )
                if target.is_file():
                    row.update(features=str(target), n_tiles=count_tiles(target), status="cached")
                else:
                    bar.reset(tile_task, total=None, description=f"Tiles of {path.name}")
                    if warm_up:
                        encode_slide(path, encoder, mpp, tile_size, min_tissue, batch_size, slide_mpp)
                        warm_up = False
                    start = time.perf_counter()
                    feats, coords, level0 = encode_slide(
                        path, encoder, mpp, tile_size, min_tissue, batch_size, slide_mpp,
                        on_tiles=lambda done, total: bar.update(tile_task, completed=done, total=total),
                    )  # fmt: skip
                    seconds = time.perf_counter() - start  # the slide's work, not the cache write
                    write_features(target, feats, coords, encoder, path, mpp, tile_size, min_tissue, level0)
                    row.update(features=str(target), n_tiles=len(feats), status="extracted")
            except (Her2ScoreError, OSError) as exc:
                cause = exc.cause if isinstance(exc, Her2ScoreError) else str(exc)
                row.update(status="failed", cause=cause or type(exc).__name__)
            row["seconds"] = round(time.perf_counter() - start if seconds is None else seconds, 4)
            rows.append(row)
            bar.advance(slide_task)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_bag_manifest(manifest: str | Path, extracted: Any, out_path: str | Path) -> Any:
    """``manifest``'s rows with ``slide`` pointing at each slide's feature file (relative to the new
    manifest's folder), rows whose slide failed left out; written atomically. Returns the frame."""
    import pandas as pd

    from her2score.io import write_csv

    manifest, out_path = Path(manifest), Path(out_path)
    raw = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    by_slide = {
        _resolved(r.slide): r.features for r in extracted.itertuples() if r.status in ("extracted", "cached")
    }
    files = [by_slide.get(_resolved(slide_path_in(manifest, s))) for s in raw["slide"].str.strip()]
    keep = [f is not None for f in files]
    frame = raw[keep].copy()
    frame["slide"] = [os.path.relpath(f, out_path.parent.resolve()) for f in files if f is not None]
    write_csv(out_path, frame, index=False)
    return frame


def slide_path_in(manifest: Path, slide: str) -> Path:
    """A manifest's slide path, relative ones taken from the manifest's folder."""
    path = Path(slide).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())
