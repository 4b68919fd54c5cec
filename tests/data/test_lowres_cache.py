"""The low-resolution cache never serves a stale image for a changed file, and lives in one place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "slide"))
from slide_fixtures import synthetic_tissue

from her2score.data.lowres import LowResParams, cache_key, content_hash, default_cache_dir, load_or_prepare
from her2score.paths import cache_dir

PARAMS = LowResParams(mpp=8.0, size=32)


def _bmp(path: Path, rgb: np.ndarray) -> Path:
    """Uncompressed: two images of the same size make files of the same size."""
    Image.fromarray(rgb).save(path, format="BMP")
    return path


def _same_size_same_samples(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A slide, and a second version of it: same byte size, same first/middle/last 64 KiB."""
    first = synthetic_tissue(512, 512, seed=1)
    second = first.copy()
    second[150:180] = 255  # rows stored far from the sampled start, middle and end of the file
    path = _bmp(tmp_path / "case.bmp", first)
    other = _bmp(tmp_path / "other.bmp", second)
    assert path.stat().st_size == other.stat().st_size
    assert content_hash(path) == content_hash(other)  # what the old key alone looked at
    return path, first, second


def test_changed_file_is_not_served_from_the_cache(tmp_path: Path) -> None:
    path, _, second = _same_size_same_samples(tmp_path)
    cache = tmp_path / "cache"
    before = load_or_prepare(path, PARAMS, cache, slide_mpp=2.0)
    key = cache_key(path, PARAMS, 2.0)
    assert (cache / f"{key}.png").is_file()
    stat = path.stat()

    _bmp(path, second)  # rewritten in place: same size, same sampled bytes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_key(path, PARAMS, 2.0) != key
    after = load_or_prepare(path, PARAMS, cache, slide_mpp=2.0)
    fresh = load_or_prepare(path, PARAMS, None, slide_mpp=2.0)
    assert np.array_equal(after, fresh)
    assert not np.array_equal(after, before)


def test_key_depends_on_mtime_content_and_parameters(tmp_path: Path) -> None:
    path, first, _ = _same_size_same_samples(tmp_path)
    key = cache_key(path, PARAMS, 2.0)
    assert cache_key(path, PARAMS, 2.0) == key  # stable
    assert cache_key(path, PARAMS, 1.0) != key
    assert cache_key(path, LowResParams(mpp=8.0, size=64), 2.0) != key
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cache_key(path, PARAMS, 2.0) != key
    # a different file restored with the old modification time: the content hash tells them apart
    changed = first.copy()
    changed[:20] = 0
    _bmp(path, changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key(path, PARAMS, 2.0) != key


def test_default_cache_is_the_shared_lowres_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2SCORE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == cache_dir("lowres") == tmp_path / "c" / "lowres"
