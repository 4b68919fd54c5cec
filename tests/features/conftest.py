"""Tiny pyramidal TIFF slides (1 µm/px, one tissue ellipse each) shared by the feature tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from tiny_slides import make_tiny_cohort


@pytest.fixture(scope="session")
def slide_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 512-px slides at 1 µm/px and their manifest."""
    return make_tiny_cohort(tmp_path_factory.mktemp("feature_cohort"), n=6, size=512, mpp=1.0)


@pytest.fixture(scope="session")
def slide_paths(slide_manifest: Path) -> list[Path]:
    return sorted((slide_manifest.parent / "slides").glob("*.tiff"))
