"""Shared fixtures of the service tests: a tiny untrained low-resolution checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``lowres-resnet`` checkpoint (3 classes, 32-px input at 4 µm/px), enough to predict and explain."""
    from her2score.engine.checkpoint import save_model
    from her2score.models.registry import create_model

    model = create_model("lowres-resnet", 3, stain_head=True).eval()
    meta = {
        "task": "her2-3way", "classes": ["0", "low", "high"], "model": "lowres-resnet",
        "model_kwargs": model.build_kwargs(), "input_kind": "lowres",
        "data": {"mpp": 4.0, "input_size": 32, "margin": 0.02},
        "stats": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }  # fmt: skip
    return save_model(tmp_path_factory.mktemp("model") / "model.safetensors", model, meta)
