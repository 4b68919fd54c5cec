"""Metrics against scikit-learn and hand-worked examples; bootstrap CIs; edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from her2score.report.metrics import (
    classification_metrics,
    group_metrics,
    group_table,
    json_ready,
    metrics_table,
    per_class_table,
    pool_folds,
)

CLASSES_3 = ["0", "low", "high"]


def noisy_predictions(n: int, k: int, signal: float, seed: int, decimals: int | None = None):
    """Cases with a true class and softmax probabilities that favour it by ``signal``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    if decimals is not None:  # coarse scores create ties, which the AUC must count half
        probs = np.round(probs, decimals) + 1e-9
        probs /= probs.sum(axis=1, keepdims=True)
    return y, probs


def test_perfect_predictions_score_one():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    probs = np.eye(3)[y] * 0.8 + 0.1
    m = classification_metrics(y, probs, CLASSES_3, n_boot=50)
    for name in ("auc_macro", "f1_macro", "accuracy", "balanced_accuracy", "kappa_qw"):
        assert m[name] == pytest.approx(1.0), name
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert m["n"] == 7
    assert m["classes"] == CLASSES_3


@pytest.mark.parametrize(("k", "decimals"), [(3, None), (4, 1), (3, 2)])
def test_matches_sklearn(k, decimals):
    y, probs = noisy_predictions(240, k, signal=1.0, seed=k, decimals=decimals)
    classes = [f"c{i}" for i in range(k)]
    m = classification_metrics(y, probs, classes, n_boot=20)
    pred = probs.argmax(axis=1)
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["kappa_qw"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred)
    for c, name in enumerate(classes):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision[c])
        assert row["recall"] == pytest.approx(recall[c])
        assert row["f1"] == pytest.approx(f1[c])
        assert row["support"] == support[c]
        assert row["auc"] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))


def test_worked_three_class_example():
    """Six cases worked by hand (see the comments for each figure)."""
    y = ["0", "0", "low", "low", "high", "high"]
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # 0 -> 0
            [0.3, 0.6, 0.1],  # 0 -> low
            [0.2, 0.7, 0.1],  # low -> low
            [0.1, 0.5, 0.4],  # low -> low
            [0.1, 0.2, 0.7],  # high -> high
            [0.5, 0.1, 0.4],  # high -> 0
        ]
    )
    m = classification_metrics(y, probs, CLASSES_3, n_boot=100)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # F1 per class: 0 -> 0.5, low -> 2*(2/3)*1/(5/3) = 0.8, high -> 2*1*0.5/1.5 = 2/3.
    assert m["per_class"]["low"]["f1"] == pytest.approx(0.8)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Quadratic kappa: observed cost 1*1 + 1*4 = 5, expected cost 7 -> 1 - 5/7.
    assert m["kappa_qw"] == pytest.approx(2 / 7)
    # One-vs-rest AUCs: 7/8, 7/8 and 7.5/8 (a tie at 0.4 counts half).
    assert m["per_class"]["0"]["auc"] == pytest.approx(0.875)
    assert m["per_class"]["low"]["auc"] == pytest.approx(0.875)
    assert m["per_class"]["high"]["auc"] == pytest.approx(0.9375)
    assert m["auc_macro"] == pytest.approx((0.875 + 0.875 + 0.9375) / 3)


def test_binary_auc_is_that_of_the_positive_class():
    y, probs = noisy_predictions(200, 2, signal=1.2, seed=3)
    m = classification_metrics(y, probs[:, 1], ["neg", "pos"], n_boot=20, ordinal=False)
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, probs.argmax(axis=1), average="macro"))
    assert m["kappa_qw"] is None
    assert "kappa_qw" not in m["ci"]


def test_random_scores_give_chance_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    probs = rng.dirichlet(np.ones(3), size=3000)
    m = classification_metrics(y, probs, CLASSES_3, n_boot=200)
    assert abs(m["auc_macro"] - 0.5) < 0.03
    assert abs(m["kappa_qw"]) < 0.06
    low, high = m["ci"]["auc_macro"]
    assert low < m["auc_macro"] < high
    assert 0.01 < high - low < 0.1


def test_ci_contains_point_and_narrows_with_more_cases():
    widths = {}
    for n in (60, 600):
        y, probs = noisy_predictions(n, 3, signal=1.0, seed=11)
        m = classification_metrics(y, probs, CLASSES_3, n_boot=400, seed=1)
        for name in ("auc_macro", "f1_macro", "accuracy", "balanced_accuracy", "kappa_qw"):
            low, high = m["ci"][name]
            assert low <= m[name] <= high, (n, name)
            assert low < high, (n, name)
        for name in CLASSES_3:
            low, high = m["per_class"][name]["auc_ci"]
            assert low <= m["per_class"][name]["auc"] <= high
        widths[n] = {name: high - low for name, (low, high) in m["ci"].items()}
    for name in widths[60]:
        assert widths[600][name] < 0.7 * widths[60][name], name


def test_bootstrap_is_deterministic_with_seed():
    y, probs = noisy_predictions(150, 3, signal=1.0, seed=5)
    a = classification_metrics(y, probs, CLASSES_3, n_boot=200, seed=7)
    b = classification_metrics(y, probs, CLASSES_3, n_boot=200, seed=7)
    c = classification_metrics(y, probs, CLASSES_3, n_boot=200, seed=8)
    assert a["ci"] == b["ci"]
    assert a["ci"] != c["ci"]
    assert a["auc_macro"] == c["auc_macro"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_is_excluded_from_macro_with_a_note():
    y, probs = noisy_predictions(120, 3, signal=1.5, seed=4)
    keep = y != 2
    y, probs = y[keep], probs[keep]
    m = classification_metrics(y, probs, CLASSES_3, n_boot=100)
    assert np.isnan(m["per_class"]["high"]["auc"])
    assert np.isnan(m["per_class"]["high"]["recall"])
    assert m["per_class"]["high"]["support"] == 0
    auc_0 = skm.roc_auc_score(y == 0, probs[:, 0])
    auc_1 = skm.roc_auc_score(y == 1, probs[:, 1])
    assert m["auc_macro"] == pytest.approx((auc_0 + auc_1) / 2)
    pred = probs.argmax(axis=1)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, labels=[0, 1], average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert any("high" in note and "undefined" in note for note in m["notes"])
    assert np.isfinite(m["ci"]["auc_macro"]).all()


def test_probabilities_are_renormalised_with_a_note():
    y, probs = noisy_predictions(90, 3, signal=1.0, seed=6)
    scaled = classification_metrics(y, probs * 3.0, CLASSES_3, n_boot=50)
    plain = classification_metrics(y, probs, CLASSES_3, n_boot=50)
    assert scaled["auc_macro"] == pytest.approx(plain["auc_macro"])
    for name, interval in plain["ci"].items():
        assert scaled["ci"][name] == pytest.approx(interval)
    assert any("renormalised" in note for note in scaled["notes"])
    assert not any("renormalised" in note for note in plain["notes"])


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        ([0, 1], [[0.5, np.nan, 0.5], [0.2, 0.3, 0.5]], "NaN"),
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], "shape"),
        ([0, 1], [[0.5, -0.1, 0.6], [0.2, 0.3, 0.5]], "non-negative"),
        ([0, 1], [[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]], "zero"),
        (["0", "4+"], [[0.5, 0.2, 0.3], [0.2, 0.3, 0.5]], "unknown class"),
        ([0, 3], [[0.5, 0.2, 0.3], [0.2, 0.3, 0.5]], "out of range"),
    ],
)
def test_bad_input_raises(y, probs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, np.array(probs, dtype=float), CLASSES_3, n_boot=10)


def test_tiny_cohorts_do_not_crash():
    one = classification_metrics([1], [[0.2, 0.7, 0.1]], CLASSES_3, n_boot=50)
    assert one["accuracy"] == 1.0
    assert np.isnan(one["auc_macro"])
    assert np.isnan(one["kappa_qw"])
    assert any("wide" in note for note in one["notes"])
    three = classification_metrics(["0", "low", "high"], np.eye(3), CLASSES_3, n_boot=50)
    assert three["auc_macro"] == pytest.approx(1.0)


def test_names_and_indices_agree():
    y, probs = noisy_predictions(80, 3, signal=1.0, seed=9)
    by_index = classification_metrics(y, probs, CLASSES_3, n_boot=30)
    by_name = classification_metrics([CLASSES_3[i] for i in y], probs, CLASSES_3, n_boot=30)
    assert by_index == by_name


def test_group_metrics_split_by_site():
    y, probs = noisy_predictions(150, 3, signal=1.0, seed=12)
    sites = np.array(["A", "B", "C"])[np.arange(150) % 3]
    by_site = group_metrics(y, probs, sites, CLASSES_3, n_boot=30)
    assert list(by_site) == ["A", "B", "C"]
    assert sum(m["n"] for m in by_site.values()) == 150
    alone = classification_metrics(y[sites == "B"], probs[sites == "B"], CLASSES_3, n_boot=30)
    assert by_site["B"]["auc_macro"] == pytest.approx(alone["auc_macro"])
    table = group_table(by_site)
    assert list(table["group"]) == ["A", "B", "C"]
    assert table["n"].sum() == 150


def _fold_frames(k_folds: int = 3):
    y, probs = noisy_predictions(180, 3, signal=1.0, seed=13)
    frames = []
    for fold in range(k_folds):
        rows = slice(fold * 60, (fold + 1) * 60)
        frame = pd.DataFrame(
            {"slide": [f"s{fold}_{i}" for i in range(60)], "y_true": [CLASSES_3[v] for v in y[rows]]}
        )
        for c, name in enumerate(CLASSES_3):
            frame[f"prob_{name}"] = probs[rows, c]
        frames.append(frame)
    return y, probs, frames


def test_pool_folds_pools_and_summarises():
    y, probs, frames = _fold_frames()
    cv = pool_folds(frames, CLASSES_3, n_boot=50)
    pooled = classification_metrics(y, probs, CLASSES_3, n_boot=50)
    assert cv["pooled"]["auc_macro"] == pytest.approx(pooled["auc_macro"])
    assert cv["n_folds"] == 3
    fold_aucs = [m["auc_macro"] for m in cv["folds"].values()]
    assert cv["fold_summary"]["auc_macro"]["mean"] == pytest.approx(np.mean(fold_aucs))
    assert cv["fold_summary"]["auc_macro"]["sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
    # The same predictions in one frame with a fold column give the same result.
    one = pd.concat([f.assign(fold=i) for i, f in enumerate(frames)], ignore_index=True)
    assert pool_folds([one], CLASSES_3, n_boot=50)["fold_summary"] == cv["fold_summary"]


def test_pool_folds_needs_probability_columns():
    _, _, frames = _fold_frames()
    with pytest.raises(ValueError, match="prob_high"):
        pool_folds([f.drop(columns="prob_high") for f in frames], CLASSES_3)


def test_tables():
    y, probs, frames = _fold_frames()
    m = classification_metrics(y, probs, CLASSES_3, n_boot=50)
    table = metrics_table(m)
    assert list(table.columns) == ["metric", "value", "ci_low", "ci_high"]
    assert list(table["metric"]) == ["auc_macro", "f1_macro", "accuracy", "balanced_accuracy", "kappa_qw"]
    assert (table["ci_low"] <= table["value"]).all()
    assert (table["value"] <= table["ci_high"]).all()
    cv_table = metrics_table(pool_folds(frames, CLASSES_3, n_boot=50))
    assert {"fold_mean", "fold_sd"} <= set(cv_table.columns)
    classes = per_class_table(m)
    assert list(classes["class"]) == CLASSES_3
    assert classes["support"].sum() == len(y)


def test_json_ready_replaces_nan():
    import json

    m = classification_metrics(
        [0, 0, 1], [[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]], CLASSES_3, n_boot=20
    )
    assert np.isnan(m["per_class"]["high"]["auc"])
    text = json.dumps(json_ready(m), allow_nan=False)
    assert json.loads(text)["per_class"]["high"]["auc"] is None
    assert json.loads(text)["auc_macro"] == pytest.approx(m["auc_macro"])
