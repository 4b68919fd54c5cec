"""Feature extraction over a cohort: cached per slide and reused, resumable after a kill, a broken slide
listed and skipped, and a bag manifest the ``bag`` input kind reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from her2score.data.inputs.bag import FeatureBags, read_bag
from her2score.data.manifest import load_manifest
from her2score.features.encoders import StainEncoder
from her2score.features.extract import extract_features, write_bag_manifest


class CountingEncoder(StainEncoder):
    """The stain encoder, counting its calls and tiles; raises KeyboardInterrupt at call ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        super().__init__()
        self.calls = self.tiles = 0
        self.kill_at = kill_at

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        self.tiles += len(tiles)
        return super().__call__(tiles)


def _extract(slides: list[Path], out: Path, encoder: CountingEncoder, mpp: float = 1.0) -> pd.DataFrame:
    # one encoder call per slide (at most a few dozen tiles each): calls count slides
    return extract_features(slides, out, encoder, mpp=mpp, tile_size=64, batch_size=4096, quiet=True)


def test_features_are_written_once_and_reused(slide_paths: list[Path], tmp_path: Path) -> None:
    first = CountingEncoder()
    done = _extract(slide_paths, tmp_path, first)
    assert set(done["status"]) == {"extracted"}
    assert first.calls == len(slide_paths)
    assert first.tiles == done["n_tiles"].sum() > 0
    with safe_open(done["features"][0], framework="numpy") as fh:
        meta = fh.metadata()
        assert fh.get_tensor("features").shape == (done["n_tiles"][0], first.dim)
        assert fh.get_tensor("coords").shape == (done["n_tiles"][0], 2)
    assert (meta["encoder"], meta["mpp"], meta["tile_size"]) == ("stain", "1", "64")
    assert meta["her2score_version"]

    again = CountingEncoder()
    reused = _extract(slide_paths, tmp_path, again)
    assert again.calls == 0
    assert set(reused["status"]) == {"cached"}
    assert list(reused["features"]) == list(done["features"])
    assert list(reused["n_tiles"]) == list(done["n_tiles"])

    # another µm/px is another cache entry; a slide whose file changed is extracted again, alone
    other = CountingEncoder()
    assert set(_extract(slide_paths[:1], tmp_path, other, mpp=2.0)["status"]) <= {"extracted", "failed"}
    touched = tmp_path / "copy" / slide_paths[1].name
    touched.parent.mkdir()
    shutil.copy2(slide_paths[1], touched)
    slides = [*slide_paths[:1], touched]
    _extract(slides, tmp_path, CountingEncoder())
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = CountingEncoder()
    assert list(_extract(slides, tmp_path, changed)["status"]) == ["cached", "extracted"]
    assert changed.calls == 1


def test_a_killed_extraction_resumes_with_only_the_rest(slide_paths: list[Path], tmp_path: Path) -> None:
    killed = CountingEncoder(kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        _extract(slide_paths, tmp_path, killed)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]  # no half-written file
    resumed = CountingEncoder()
    frame = _extract(slide_paths, tmp_path, resumed)
    assert resumed.calls == len(slide_paths) - 2
    assert list(frame["status"]) == ["cached"] * 2 + ["extracted"] * (len(slide_paths) - 2)


def test_a_broken_slide_is_listed_and_skipped(
    slide_manifest: Path, slide_paths: list[Path], tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(slide_manifest.parent, cohort)
    (cohort / "slides" / slide_paths[2].name).write_bytes(slide_paths[2].read_bytes()[:3000])  # truncated
    slides = sorted((cohort / "slides").glob("*.tiff"))
    frame = _extract(slides, tmp_path / "features", CountingEncoder())
    assert list(frame["status"] == "failed") == [i == 2 for i in range(len(slides))]
    assert frame["cause"][2]
    assert frame["features"][2] == ""
    # the bag manifest leaves the broken slide out and the bag input kind reads every other row
    bag_manifest = write_bag_manifest(cohort / "manifest.csv", frame, tmp_path / "features" / "manifest.csv")
    assert len(bag_manifest) == len(slides) - 1
    rows = load_manifest(tmp_path / "features" / "manifest.csv", task="her2-4way").frame.to_dict("records")
    prepared = FeatureBags().prepare(rows, quiet=True)
    assert not prepared.failures
    assert len(prepared.items) == len(slides) - 1
    features, coords = read_bag(rows[0]["slide"])
    assert features.shape[1] == StainEncoder().dim
    assert coords.shape == (features.shape[0], 2)
