"""Tiled scoring of images larger than a tile: each cell counted once, scores over cells, heterogeneity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score.data.synth.patches import render_ihc_patch
from her2score.quantify import Thresholds
from her2score.quantify.cells import CellParams
from her2score.quantify.tiled import (
    NOT_SCORABLE,
    heterogeneity,
    ki67_group,
    quantify_tiled,
    tile_cores,
)

MPP = 0.5


def _two_halves(
    path: Path, left: tuple[str, str], right: tuple[str, str], seed: int = 0
) -> tuple[Path, list[pd.DataFrame]]:
    """A 2048 x 1024 PNG at 0.5 µm/px: two synthetic patches side by side, and their per-cell truths."""
    from PIL import Image

    halves, truths = [], []
    for i, (category, marker) in enumerate((left, right)):
        rgb, truth = render_ihc_patch(
            category, size=(1024, 1024), mpp=MPP, seed=seed + i, site=i, marker=marker
        )
        halves.append(rgb)
        truths.append(truth)
    Image.fromarray(np.concatenate(halves, axis=1)).save(path)
    return path, truths


def _tiled(
    path: Path, out: Path, marker: str, region_um: float, workers: int = 0, blank_file: bool = False
) -> object:
    """``quantify_tiled`` on ``path``; ``blank_file``: the file is overwritten with white once open."""
    from PIL import Image

    from her2score.quantify.nuclear import NuclearThresholds
    from her2score.slide import open_slide

    out.mkdir(parents=True, exist_ok=True)
    with open_slide(path, mpp=MPP) as slide:
        if blank_file:
            Image.new("RGB", (slide.width, slide.height), "white").save(path)
        return quantify_tiled(
            slide,
            path,
            path.stem,
            out,
            MPP,
            MPP,
            marker,
            Thresholds(),
            CellParams(),
            "auto",
            workers,
            nuclear_thresholds=NuclearThresholds(),
            region_um=region_um,
        )


def test_ki67_groups_follow_the_working_group_cut_points() -> None:
    assert [ki67_group(v) for v in (0.0, 4.9, 5.0, 29.9, 30.0, 90.0)] == [
        "low",
        "low",
        "intermediate",
        "intermediate",
        "high",
        "high",
    ]


def test_heterogeneity_shares_come_from_scorable_regions_only() -> None:
    regions = pd.DataFrame(
        {
            "tissue_mm2": [0.2, 0.2, 0.1, 0.3],
            "n_tumour": [300, 100, 50, 5],
            "category": ["3+", "3+", "1+", NOT_SCORABLE],
        }
    )
    row = heterogeneity(regions, "her2", 500.0)
    assert row["n_regions"] == 4
    assert row["n_regions_scorable"] == 3
    assert row["region_pct_area_3+"] == pytest.approx(80.0)
    assert row["region_pct_area_1+"] == pytest.approx(20.0)
    assert row["region_pct_cells_3+"] == pytest.approx(400 / 450 * 100)
    assert row["heterogeneous"]
    assert row["heterogeneity"] == "3+ 80% · 1+ 20%"
    single = heterogeneity(regions.iloc[:2], "her2", 500.0)
    assert not single["heterogeneous"]


def test_tile_cores_tile_the_image_without_gaps_or_overlaps() -> None:
    from her2score.slide.tissue import Tile

    tiles = [Tile(x, y, 100, 100, 100, 0.5, 1.0) for y in (0, 90) for x in (0, 90, 180)]
    cores = tile_cores(tiles)
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in cores)
    assert area == 280 * 190  # the union of the tiles, each point in exactly one core


@pytest.mark.slow
def test_her2_core_split_into_regions_reads_both_halves(tmp_path: Path) -> None:
    path, _ = _two_halves(tmp_path / "core.png", ("3+", "her2"), ("0", "her2"))
    result = _tiled(path, tmp_path / "out", "her2", region_um=256.0, workers=2)
    row = result.row
    assert row["mode"].startswith("tiled")
    regions = pd.read_csv(result.regions_path)
    # 256 µm regions: columns 0-1 are the 3+ half, 2-3 the 0 half
    left = regions[regions["region_col"] <= 1]
    right = regions[regions["region_col"] >= 2]
    assert (left["category"] == "3+").mean() >= 0.5, left
    assert set(right["category"]) <= {"0", "1+", NOT_SCORABLE}, right
    assert row["heterogeneous"]
    assert 30 < row["region_pct_area_3+"] < 70
    # each cell counted once: the total over cells equals the sum of the per-region counts
    cells = pd.read_parquet(result.cells_path)
    assert cells["cell_id"].is_unique
    assert int(cells["is_tumour"].sum()) == row["n_tumour_cells"] == int(regions["n_tumour"].sum())
    from scipy.spatial import cKDTree

    xy = cells[["x_um", "y_um"]].to_numpy()
    assert cKDTree(xy).query(xy, k=2)[0][:, 1].min() > 2.0
    assert result.region_map_path.stat().st_size > 0


@pytest.mark.slow
def test_nuclear_tiled_matches_truth_and_maps_ki67_groups(tmp_path: Path) -> None:
    path, truths = _two_halves(tmp_path / "ki67.png", ("pos", "er"), ("neg", "er"), seed=5)
    result = _tiled(path, tmp_path / "out", "ki67", region_um=256.0)
    row = result.row
    tumour = pd.concat([t[t["is_tumour"]] for t in truths])
    true_pct = 100.0 * float(tumour["nuclear_positive"].mean())
    assert row["scorable"]
    assert abs(row["pct_positive"] - true_pct) < 8.0, (row["pct_positive"], true_pct)
    regions = pd.read_csv(result.regions_path)
    assert (regions.loc[regions["region_col"] >= 2, "category"].isin(["low", NOT_SCORABLE])).all()
    assert row["ki67_hotspot_index"] >= row["pct_positive"]
    assert int(regions["n_tumour"].sum()) == row["n_nuclei"]


def test_tile_workers_give_the_cells_of_one_process(tmp_path: Path) -> None:
    """Tiles over two worker processes (started before the overview is read, given this process's
    decoded image rather than decoding the file again: here the file is blanked once open) give the
    same cells, regions and row as tiles in this process."""
    from PIL import Image

    rgb, _ = render_ihc_patch("3+", size=(640, 640), mpp=MPP, seed=3)
    path = tmp_path / "field.png"
    Image.fromarray(np.concatenate([rgb, rgb[:, ::-1]], axis=1)).save(path)  # 1280 px wide: 2 tiles
    one = _tiled(path, tmp_path / "one", "her2", region_um=256.0, workers=0)
    two = _tiled(path, tmp_path / "two", "her2", region_um=256.0, workers=2, blank_file=True)
    assert one.row["mode"] == two.row["mode"] == "tiled (2 tiles)"
    pd.testing.assert_frame_equal(pd.read_parquet(one.cells_path), pd.read_parquet(two.cells_path))
    pd.testing.assert_frame_equal(pd.read_csv(one.regions_path), pd.read_csv(two.regions_path))
    assert {k: v for k, v in one.row.items() if k != "tiles_cpu_s"} == {
        k: v for k, v in two.row.items() if k != "tiles_cpu_s"
    }
