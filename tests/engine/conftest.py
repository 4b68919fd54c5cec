"""A tiny cohort of pyramidal TIFFs and a fast training configuration, shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_slides import make_tiny_cohort

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
