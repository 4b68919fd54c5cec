"""A tiny cohort of pyramidal TIFFs and a fast training configuration, shared by the engine tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_slides import make_tiny_cohort

from her2score.data.manifest import load_manifest
from her2score.engine.config import TrainConfig, load_config


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cohort(tmp_path_factory.mktemp("cohort"), n=12)


@pytest.fixture
def fast_config(tmp_path: Path) -> TrainConfig:
    return load_config(
        None, epochs=2, input_size=64, batch_size=4, n_boot=20, cache_dir=str(tmp_path / "cache"),
        backbone="convnext_atto", device="cpu", warmup_epochs=0.5, model_choice="validation",
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_and_slides(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch model and a copy of the tiny cohort's slides with a broken TIFF in the middle."""
    from her2score.engine.train import train_run

    tmp = tmp_path_factory.mktemp("batch")
    cfg = load_config(None, epochs=1, input_size=32, batch_size=4, n_boot=10, cache_dir=str(tmp / "cache"))
    run = train_run(
        load_manifest(tiny_manifest), cfg, tmp / "run", quiet=True, log=lambda s: None, heatmaps=0
    )
    folder = tmp / "slides"
    shutil.copytree(tiny_manifest.parent / "slides", folder)
    (folder / "case_005b.tiff").write_bytes(b"II*\x00" + b"\x01" * 300)  # broken, in the middle by name
    return run.model_paths[0], folder
