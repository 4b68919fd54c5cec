"""Did a run learn anything? Checks that turn a silent failure into a warning at the top of the report.

A model that never beats the class prior on validation, or whose held-out predictions all fall in one
class or sit near the uniform distribution, has learned nothing a user should trust; the run still
completes, but says so loudly (log and report).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Mean top probability within this of 1/K counts as near-uniform (K classes).
UNIFORM_MARGIN = 0.05


def prior_log_loss(train_labels: np.ndarray, val_labels: np.ndarray, num_classes: int) -> float:
    """Validation log-loss of the class prior of the training labels (the trivial model)."""
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64) + 0.5  # no zero class
    prior = counts / counts.sum()
    return float(-np.mean(np.log(prior[val_labels]))) if len(val_labels) else float("nan")


def learning_warnings(
    history: list[dict[str, Any]],
    prior_loss: float,
    probs: np.ndarray,
    classes: list[str],
    majority_share: float | None = None,
) -> list[str]:
    """Warnings for a run that learned nothing (empty when none applies).

    Validation loss that never beats the class prior says "learned nothing" when validation accuracy
    never beat always predicting the majority class (``majority_share``) either; when accuracy did,
    the model ranks slides but its probabilities are poorly calibrated, which is said instead.
    """
    out = []
    val_losses = [r["val_loss"] for r in history if "val_loss" in r]
    if val_losses and np.isfinite(prior_loss) and min(val_losses) >= prior_loss - 1e-6:
        best_acc = max(r.get("val_accuracy", 0.0) for r in history)
        if majority_share is None or best_acc <= majority_share + 1e-9:
            out.append(
                f"the model learned nothing: its best validation loss ({min(val_losses):.3f}) never beat "
                f"predicting the class frequencies ({prior_loss:.3f})"
                + (f", nor its accuracy ({best_acc:.2f}) the majority class's ({majority_share:.2f})"
                   if majority_share is not None else "")
            )  # fmt: skip
        else:
            out.append(
                f"poorly calibrated: the best validation loss ({min(val_losses):.3f}) never beat predicting "
                f"the class frequencies ({prior_loss:.3f}), though validation accuracy ({best_acc:.2f}) beat "
                f"the majority class's ({majority_share:.2f}); trust its ranking more than its probabilities"
            )
    if len(probs) >= 4:
        predicted = probs.argmax(1)
        if len(set(predicted.tolist())) == 1:
            out.append(
                f"predictions collapsed: every held-out slide is predicted {classes[int(predicted[0])]}"
            )
        k = probs.shape[1]
        top = float(probs.max(1).mean())
        if top < 1.0 / k + UNIFORM_MARGIN:
            out.append(
                f"near-uniform predictions: the mean top probability is {top:.2f} against {1 / k:.2f} "
                "for a model that knows nothing"
            )
    return out
