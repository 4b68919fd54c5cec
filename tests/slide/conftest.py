"""Fixtures for the slide tests: generated pyramidal TIFFs and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from slide_fixtures import SIZE, make_bad_files, synthetic_tissue, write_pyramid


@pytest.fixture(scope="session")
def tissue_rgb() -> np.ndarray:
    return synthetic_tissue(*SIZE)


@pytest.fixture(scope="session")
def pyramid_tiff(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """4096x3072 px at 0.25 µm/px, 4 levels as successive IFDs, JPEG tiles (OpenSlide generic-tiff)."""
    return write_pyramid(tmp_path_factory.mktemp("slides") / "pyramid.tif", tissue_rgb)


@pytest.fixture(scope="session")
def subifd_tiff(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """The same slide with its reduced levels in SubIFDs, which OpenSlide does not see."""
    return write_pyramid(tmp_path_factory.mktemp("slides") / "subifd.tif", tissue_rgb, subifds=True)


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: pytest.TempPathFactory, pyramid_tiff: Path) -> dict[str, tuple[Path, str]]:
    return make_bad_files(tmp_path_factory.mktemp("bad"), pyramid_tiff)
