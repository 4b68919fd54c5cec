"""bench_recipes.py --as-user: the plain colour/OD logistic regression reported beside the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from her2score.data.manifest import load_manifest
from her2score.engine.config import TrainConfig

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_recipes.py"


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_recipes", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_plain_lr_reads_the_brown_tint_of_held_out_slides(
    tiny_manifest: Path, fast_config: TrainConfig
) -> None:
    cohort = load_manifest(tiny_manifest)
    test = np.arange(len(cohort))[::3]
    train = np.setdiff1d(np.arange(len(cohort)), test)
    probs = _bench().plain_lr(cohort.subset(train), cohort.subset(test), fast_config)
    assert probs.shape == (len(test), len(cohort.classes))
    assert np.allclose(probs.sum(1), 1)
    y = cohort.y[test]
    # the tiny slides' DAB tint grows with the score: the expected score follows it
    expected = probs @ np.arange(len(cohort.classes))
    assert np.corrcoef(expected, y)[0, 1] > 0.5
