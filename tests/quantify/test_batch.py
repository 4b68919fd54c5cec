"""Batch scoring as a library call: folders by content, unique output names, failures listed, workers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from her2score.quantify import BatchResult, Thresholds, quantify_batch

from .test_quantify import draw_ihc


def _png(path: Path, rgb) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("batch")
    folder = d / "in"
    strong = _png(folder / "strong.png", draw_ihc(1.0, size_um=120))
    _png(folder / "negative.png", draw_ihc(0.0, size_um=120))
    good = strong.read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])  # a PNG cut short: read fails
    (folder / "strong.cells.parquet").write_bytes(b"PAR1 not really")  # sidecars are skipped
    (folder / "manifest.csv").write_text("slide,her2\nstrong.png,3+\n")
    _png(folder / "earlier.overlay.png", draw_ihc(1.0, size_um=40))
    other = _png(d / "other" / "strong.png", draw_ihc(0.45, size_um=120))  # same stem as in/strong.png
    return {"folder": folder, "other": other}


def _by_name(result: BatchResult) -> pd.DataFrame:
    frame = result.frame
    return frame.set_index(frame["image"].map(lambda p: f"{Path(p).parent.name}/{Path(p).name}"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_and_a_file_are_scored_with_unique_names_and_failures_listed(
    inputs: dict[str, Path], tmp_path: Path, workers: int
) -> None:
    result = quantify_batch([inputs["folder"], inputs["other"]], tmp_path, mpp=0.5, workers=workers)
    rows = _by_name(result)
    assert list(rows.index) == ["in/broken.png", "in/negative.png", "in/strong.png", "other/strong.png"]
    assert rows.loc["in/strong.png", "category"] == "3+"
    assert rows.loc["in/negative.png", "category"] == "0"
    assert rows.loc["other/strong.png", "category"] == "2+"
    assert [Path(p).name for p, _ in result.failed] == ["broken.png"]
    assert len(result.ok) == 3
    overlays = sorted(p.name for p in tmp_path.glob("*.overlay.png"))
    assert overlays == ["in_strong.overlay.png", "negative.overlay.png", "other_strong.overlay.png"]
    assert pd.read_csv(result.results_path)["status"].tolist() == rows["status"].tolist()
    assert result.thresholds == Thresholds()
    assert result.thresholds_path.is_file()


def test_workers_give_the_same_results_as_one_process(inputs: dict[str, Path], tmp_path: Path) -> None:
    one = quantify_batch([inputs["folder"]], tmp_path / "one", mpp=0.5, workers=0).frame
    two = quantify_batch([inputs["folder"]], tmp_path / "two", mpp=0.5, workers=2).frame
    pd.testing.assert_frame_equal(one, two)


def test_thresholds_from_a_file(inputs: dict[str, Path], tmp_path: Path) -> None:
    path = Thresholds(faint=0.1, moderate=0.3, intense=0.5).save(tmp_path / "t.json", source="test")
    result = quantify_batch([inputs["other"]], tmp_path / "out", thresholds=path, mpp=0.5)
    assert result.thresholds.intense == 0.5
    assert result.frame.loc[0, "category"] in ("2+", "3+")


def test_pool_worker_state_is_never_set_in_the_main_process() -> None:
    from her2score.quantify import pipeline, tiled

    assert pipeline.START_METHOD == "forkserver"
    with pytest.raises(RuntimeError, match="worker processes"):
        tiled._init_pool_worker(None)
    assert tiled._POOL_SCORER is None
