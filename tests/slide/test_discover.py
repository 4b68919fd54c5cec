"""Folder expansion: only slides and images, by content; sidecars, outputs, hidden and special files
skipped, FIFOs without being opened."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2score.errors import SlideError
from her2score.slide import sniff_format
from her2score.slide.discover import expand_inputs, is_slide_file


def _png(path: Path, fmt: str = "PNG") -> Path:
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture
def cohort_folder(tmp_path: Path, pyramid_tiff: Path) -> Path:
    """Slides beside everything a cohort folder and an earlier run leave there."""
    d = tmp_path / "cohort"
    d.mkdir()
    (d / "b-slide.tif").write_bytes(pyramid_tiff.read_bytes())
    _png(d / "a-patch.png")
    _png(d / "c-jpeg-named.png", fmt="JPEG")  # judged by content: kept
    _png(d / "scan.dat", fmt="JPEG")  # an image under any name: kept
    (d / "manifest.csv").write_text("slide,her2\nb-slide.tif,2+\n")
    (d / "a-patch.cells.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    (d / "metrics.json").write_text("{}")
    _png(d / "a-patch.overlay.png")
    _png(d / "b-slide.heatmap.png")
    _png(d / "a-patch.gradcam.png")
    _png(d / ".hidden.png")
    _png(d / "x.part.png")
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    _png(d / "sub" / "nested.png")  # not recursive
    (d / "dangling.png").symlink_to(d / "missing.png")
    return d


def test_folder_yields_only_the_slides(cohort_folder: Path) -> None:
    got = expand_inputs([cohort_folder])
    assert [p.name for p in got] == ["a-patch.png", "b-slide.tif", "c-jpeg-named.png", "scan.dat"]


def test_files_are_kept_as_given_and_folders_expanded_in_order(cohort_folder: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.svs"
    csv = cohort_folder / "manifest.csv"
    got = expand_inputs([missing, cohort_folder, csv])
    assert got[0] == missing  # checked later by the reader, which names the cause
    assert got[-1] == csv
    assert len(got) == 6


def test_dicom_folder_is_one_input(tmp_path: Path) -> None:
    d = tmp_path / "dicom"
    d.mkdir()
    (d / "a.dcm").write_bytes(b"\0" * 132)
    assert expand_inputs([d]) == [d]


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "nothing"
    d.mkdir()
    (d / "manifest.csv").write_text("slide\n")
    with pytest.raises(SlideError, match="no slide or image"):
        expand_inputs([d])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_in_a_folder_is_skipped_without_being_opened(cohort_folder: Path) -> None:
    fifo = cohort_folder / "z-slide.svs"
    os.mkfifo(fifo)
    result: list[list[Path]] = []
    thread = threading.Thread(target=lambda: result.append(expand_inputs([cohort_folder])), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "a FIFO was opened: expand_inputs blocked"
    assert fifo not in result[0]
    assert not is_slide_file(fifo)
    with pytest.raises(SlideError, match="named pipe"):
        sniff_format(fifo)


def test_link_to_a_slide_is_a_slide(tmp_path: Path) -> None:
    real = _png(tmp_path / "real.png")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    assert is_slide_file(link)
    assert not is_slide_file(tmp_path)
