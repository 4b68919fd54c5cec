"""Not-learning warnings: loud when nothing was learned, milder when only calibration is off."""

from __future__ import annotations

import numpy as np

from her2score.engine.diagnostics import learning_warnings, prior_log_loss

CLASSES = ["0", "low", "high"]


def test_prior_log_loss_is_the_entropy_of_the_training_frequencies() -> None:
    train = np.array([0, 0, 1, 2])
    assert prior_log_loss(train, np.array([0, 1, 2]), 3) > prior_log_loss(train, np.array([0, 0, 0]), 3)


def test_nothing_learned_collapsed_and_uniform_are_said() -> None:
    history = [{"val_loss": 1.2, "val_accuracy": 0.33}, {"val_loss": 1.15, "val_accuracy": 0.33}]
    uniform = np.full((6, 3), 1 / 3)
    warnings = learning_warnings(history, 1.09, uniform, CLASSES, majority_share=0.4)
    assert any(w.startswith("the model learned nothing") for w in warnings)
    assert any("collapsed" in w for w in warnings)
    assert any("near-uniform" in w for w in warnings)


def test_good_ranking_with_poor_calibration_is_not_called_learning_nothing() -> None:
    history = [{"val_loss": 1.2, "val_accuracy": 0.7}]
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    warnings = learning_warnings(history, 1.09, probs, CLASSES, majority_share=0.4)
    assert len(warnings) == 1
    assert warnings[0].startswith("poorly calibrated")
    assert learning_warnings([{"val_loss": 0.5, "val_accuracy": 0.8}], 1.09, probs, CLASSES, 0.4) == []
