"""``predict --scheduler`` and ``quantify --scheduler``: slides scored on a Dask distributed cluster give
the rows of a local run, the broken slide listed, the same resume journal; a scheduler that cannot be
reached, or Dask missing, is said clearly."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from her2score.engine.predict import predict_slides
from her2score.errors import ConfigError


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """Two worker processes, one thread each: tasks really leave this process (pickled, run elsewhere)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
def test_a_local_dask_cluster_predicts_the_rows_of_a_local_run(
    model_and_slides: tuple[Path, Path], scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from her2score.engine import predict as predict_module

    model, folder = model_and_slides
    local, local_failures = predict_slides(model, [folder], tmp_path / "local.csv", quiet=True)
    out = tmp_path / "dask.csv"
    frame, failures = predict_slides(model, [folder], out, quiet=True, scheduler=scheduler)
    pd.testing.assert_frame_equal(frame, local, check_exact=False, atol=1e-5)
    assert [Path(f.slide).name for f in failures] == ["case_005b.tiff"]
    assert failures[0].cause == local_failures[0].cause
    listed = pd.read_csv(out.with_name("dask.failures.csv"))
    assert list(listed["slide"].map(lambda s: Path(s).name)) == ["case_005b.tiff"]
    # the client journalled every slide, keyed as a local run keys them: a re-run submits nothing
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == len(frame)
    monkeypatch.setattr(predict_module, "_score_on_worker", None)  # any task would now fail
    again, _ = predict_slides(model, [folder], out, quiet=True, scheduler=scheduler)
    pd.testing.assert_frame_equal(again, frame)


@pytest.mark.slow
def test_a_local_dask_cluster_quantifies_like_a_local_run(scheduler: str, tmp_path: Path) -> None:
    from PIL import Image

    from her2score.data.synth.patches import render_ihc_patch
    from her2score.quantify import quantify_batch

    folder = tmp_path / "in"
    folder.mkdir()
    for name, category, seed in (("a_3.png", "3+", 0), ("c_0.png", "0", 1)):
        rgb, _ = render_ihc_patch(category, size=(256, 256), mpp=0.5, seed=seed)
        Image.fromarray(rgb).save(folder / name)
    (folder / "b_broken.png").write_bytes((folder / "a_3.png").read_bytes()[:200])  # cut short, in the middle
    local = quantify_batch([folder], tmp_path / "local", mpp=0.5)
    remote = quantify_batch([folder], tmp_path / "dask", mpp=0.5, scheduler=scheduler)
    pd.testing.assert_frame_equal(remote.frame, local.frame)
    assert [Path(p).name for p, _ in remote.failed] == ["b_broken.png"]
    overlays = sorted(p.name for p in (tmp_path / "dask").glob("*.overlay.png"))
    assert overlays == ["a_3.overlay.png", "c_0.overlay.png"]
    written = pd.read_csv(remote.results_path)
    assert list(written["image"].map(lambda s: Path(s).name)) == ["a_3.png", "b_broken.png", "c_0.png"]


def test_an_unreachable_scheduler_is_said_clearly(
    model_and_slides: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    from her2score import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1)
    model, folder = model_and_slides
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        predict_slides(model, [folder], tmp_path / "p.csv", quiet=True, scheduler="tcp://127.0.0.1:9")


def test_dask_not_installed_is_said_clearly(
    model_and_slides: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    model, folder = model_and_slides
    with pytest.raises(ConfigError, match=r"her2score\[distributed\]"):
        predict_slides(model, [folder], tmp_path / "p.csv", quiet=True, scheduler="tcp://127.0.0.1:9")
