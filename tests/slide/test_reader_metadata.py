"""Resolution metadata is trusted only when plausible; nothing process-wide is flipped per read; files
are closed on every error path; special files are refused without being opened."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from slide_fixtures import LEVEL0_MPP

from her2score.errors import MissingMPPError, SlideError
from her2score.slide import open_slide, sniff_format
from her2score.slide import reader as reader_module
from her2score.slide.reader import PLAUSIBLE_MPP, mpp_from_resolution_tags, plausible_mpp


def _tiff(path: Path, rgb: np.ndarray, **kwargs) -> Path:
    import tifffile

    tifffile.imwrite(path, rgb, photometric="rgb", **kwargs)
    return path


@pytest.mark.parametrize(
    ("x_resolution", "unit", "expected"),
    [
        ((40000, 1), 3, 0.25),  # tifffile: a rational, unit as a number (centimetre)
        (40000.0, 3, 0.25),  # Pillow
        ("40000", "centimeter", 0.25),  # OpenSlide's tiff.* properties
        ((101600, 1), 2, 0.25),  # inch
        ("72", "inch", 25400 / 72),
        ((72, 1), 1, None),  # unit "none": not physical
        ((0, 1), 3, None),
        ((1, 0), 3, None),
        (None, 3, None),
        ((72, 1), None, None),
        ("n/a", "inch", None),
    ],
)
def test_mpp_from_resolution_tags(x_resolution, unit, expected) -> None:
    got = mpp_from_resolution_tags(x_resolution, unit)
    assert got == (None if expected is None else pytest.approx(expected))


def test_plausible_mpp_takes_the_first_plausible_and_explains_a_refusal() -> None:
    assert plausible_mpp([("a", None), ("b", 0.5)]) == (0.5, "b", None)
    mpp, source, ignored = plausible_mpp([("TIFF resolution tags", 25400 / 72)])
    assert (mpp, source) == (None, None)
    assert "352.8 µm/px (72 dpi: a writer's default" in ignored
    assert plausible_mpp([("x", float("nan")), ("y", -1.0)]) == (None, None, None)
    lo, hi = PLAUSIBLE_MPP
    assert plausible_mpp([("x", lo)])[0] == lo
    assert plausible_mpp([("x", hi)])[0] == hi


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_dpi_default_tiff_is_not_a_resolution(tmp_path: Path, tissue_rgb: np.ndarray, dpi: int) -> None:
    path = _tiff(tmp_path / "dpi.tif", tissue_rgb[:256, :256], resolution=(dpi, dpi), resolutionunit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp is None
        assert slide.mpp_source is None
        assert f"({dpi} dpi" in slide.mpp_ignored
        with pytest.raises(MissingMPPError, match=r"dpi.*--mpp"):
            slide.require_mpp()
    with open_slide(path, mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "given")


def test_pillow_written_tiff_with_dpi_is_not_a_resolution(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    path = tmp_path / "pil.tif"
    Image.fromarray(tissue_rgb[:256, :256]).save(path, dpi=(72, 72))
    with open_slide(path) as slide:
        assert slide.mpp is None
        assert "72 dpi" in slide.mpp_ignored


def test_png_density_is_never_read(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    for dpi in (72, 101600):  # a writer default, and even a value that would be plausible
        path = tmp_path / f"{dpi}.png"
        Image.fromarray(tissue_rgb[:128, :128]).save(path, dpi=(dpi, dpi))
        with open_slide(path) as slide:
            assert slide.mpp is None
            assert slide.mpp_ignored is None


def test_plausible_tiff_resolution_is_metadata(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        assert slide.mpp == pytest.approx(LEVEL0_MPP)
        assert slide.mpp_source == "TIFF resolution tags"
        info = slide.info()
        assert (info.mpp_source, info.mpp_ignored) == ("TIFF resolution tags", None)


# ---------------------------------------------------------------------------- nothing global flipped
def test_reads_leave_pillow_limit_and_tifffile_logger_alone(
    pyramid_tiff: Path, tmp_path: Path, tissue_rgb: np.ndarray
) -> None:
    from PIL import Image as PILImage

    png = tmp_path / "a.png"
    PILImage.fromarray(tissue_rgb[:128, :128]).save(png)
    log = logging.getLogger("tifffile")
    level_before = log.level
    seen: list[object] = []

    def watch() -> None:
        for _ in range(200):
            seen.append(PILImage.MAX_IMAGE_PIXELS)

    with open_slide(png, mpp=0.5) as slide:
        slide.read_overview(mpp=1.0)
    limit = PILImage.MAX_IMAGE_PIXELS
    assert limit is not None  # raised once to our own limit, still a guard for other code
    assert limit >= reader_module.MAX_PLAIN_PIXELS
    watcher = threading.Thread(target=watch)
    watcher.start()
    for _ in range(5):
        with open_slide(png, mpp=0.5) as slide:
            slide.read_overview(mpp=1.0)
        with open_slide(pyramid_tiff) as slide:
            slide.read_overview(max_size=256)
    watcher.join()
    assert set(seen) == {limit}
    assert log.level == level_before


def test_tifffile_records_from_other_threads_still_log(caplog: pytest.LogCaptureFixture) -> None:
    reader_module._QUIET_TIFFFILE.active.on = True
    try:
        thread = threading.Thread(target=lambda: logging.getLogger("tifffile").warning("other thread"))
        thread.start()
        thread.join()
    finally:
        reader_module._QUIET_TIFFFILE.active.on = False
    assert "other thread" in caplog.text


# ---------------------------------------------------------------------------- closed on error
def test_tiff_backend_closed_when_the_slide_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _tiff(tmp_path / "thin.tif", np.full((8, 64, 3), 200, np.uint8), tile=(16, 16))
    closed: list[str] = []
    original = reader_module._TiffBackend.close

    def close(self) -> None:
        closed.append("tiff")
        original(self)

    monkeypatch.setattr(reader_module._TiffBackend, "close", close)
    with pytest.raises(SlideError, match="too small"):
        open_slide(path)
    assert closed == ["tiff"]


def test_tiff_backend_closed_on_a_bad_series(pyramid_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    closed: list[bool] = []
    original_close = tifffile.TiffFile.close

    def close(self) -> None:
        closed.append(True)
        original_close(self)

    def bad_series(self):
        raise ValueError("broken series")

    layout = reader_module._inspect_tiff(pyramid_tiff)
    monkeypatch.setattr(tifffile.TiffFile, "series", property(bad_series))
    monkeypatch.setattr(tifffile.TiffFile, "close", close)
    with pytest.raises(SlideError, match="pyramid cannot be read"):
        reader_module._TiffBackend(pyramid_tiff, layout)
    assert closed


# ---------------------------------------------------------------------------- special files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "slide.svs"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def sniff() -> None:
        try:
            sniff_format(fifo)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=sniff, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "sniff_format opened the FIFO and blocked"
    assert isinstance(result[0], SlideError)
    assert "named pipe" in str(result[0])


def test_device_is_refused() -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    with pytest.raises(SlideError, match="device"):
        sniff_format("/dev/null")
