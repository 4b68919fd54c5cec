"""The run report: Markdown plus a self-contained HTML carrying the figures and the numbers."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from her2score.report.document import write_report
from her2score.report.metrics import classification_metrics, pool_folds
from her2score.report.plots import plot_confusion

CLASSES = ["0", "low", "high"]


def metrics_and_probs(n: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs, classification_metrics(y, probs, CLASSES, n_boot=100)


def test_report_embeds_figures_and_numbers(tmp_path):
    _, _, m = metrics_and_probs()
    figure = plot_confusion(m["confusion"], CLASSES, tmp_path / "figures" / "confusion.png")
    sites = pd.DataFrame({"site": ["A", "B"], "n": [40, 50], "auc_macro": [0.91, 0.87]})
    html_path = write_report(
        tmp_path / "run",
        "Low-res ConvNeXt <her2-3way>",
        metrics=m,
        figures=[("Confusion matrix", figure), ("Gone", tmp_path / "nowhere.png")],
        tables={"Per site": sites},
        notes=["Skipped slide bad.tiff: no tissue found"],
    )
    assert html_path == tmp_path / "run" / "report.html"
    html = html_path.read_text(encoding="utf-8")
    markdown = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    # The figure travels inside the HTML, byte for byte.
    assert base64.b64encode(figure.read_bytes()).decode("ascii") in html
    assert "Gone: figure missing" in html
    # Title is escaped; numbers and CIs appear in both documents.
    assert "Low-res ConvNeXt &lt;her2-3way&gt;" in html
    for text in (html, markdown):
        assert f"{m['auc_macro']:.3f}" in text
        low, high = m["ci"]["f1_macro"]
        assert f"{low:.3f} – {high:.3f}" in text
        assert f"{m['per_class']['low']['recall']:.3f}" in text
        assert "Skipped slide bad.tiff: no tissue found" in text
        assert "Per site" in text
        assert "0.870" in text
    assert "](../figures/confusion.png)" in markdown
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_report_for_cross_validation_and_without_metrics(tmp_path):
    y, probs, _ = metrics_and_probs(n=120, seed=3)
    frames = []
    for fold in range(3):
        rows = slice(fold * 40, (fold + 1) * 40)
        frame = pd.DataFrame({"y_true": [CLASSES[v] for v in y[rows]]})
        for c, name in enumerate(CLASSES):
            frame[f"prob_{name}"] = probs[rows, c]
        frames.append(frame)
    cv = pool_folds(frames, CLASSES, n_boot=50)
    html = write_report(tmp_path / "cv", "CV", metrics=cv).read_text(encoding="utf-8")
    assert "3-fold cross-validation" in html
    assert "Per fold" in html
    mean, sd = cv["fold_summary"]["accuracy"]["mean"], cv["fold_summary"]["accuracy"]["sd"]
    assert f"{mean:.3f} ± {sd:.3f}" in html

    bare = write_report(tmp_path / "bare", "Quantifier run", notes=["3 images failed"])
    assert "3 images failed" in bare.read_text(encoding="utf-8")
    assert (tmp_path / "bare" / "report.md").is_file()


def test_report_shows_undefined_values_and_metric_notes(tmp_path):
    y, probs, _ = metrics_and_probs()
    keep = y != 2
    m = classification_metrics(y[keep], probs[keep], CLASSES, n_boot=50)
    html = write_report(tmp_path, "Missing class", metrics=m).read_text(encoding="utf-8")
    assert "No true case of class high" in html
    assert "nan" not in html.lower().replace("nan-", "")


def test_caller_table_replaces_a_builtin_section_of_the_same_title(tmp_path):
    _, _, m = metrics_and_probs()
    custom = pd.DataFrame({"class": CLASSES, "note": ["x-marker-1", "x-marker-2", "x-marker-3"]})
    html = write_report(tmp_path, "t", metrics=m, tables={"Per class": custom}).read_text(encoding="utf-8")
    assert html.count("<h2>Per class</h2>") == 1
    assert "x-marker-2" in html
    assert html.index("<h2>Per class</h2>") < html.index("<h2>Confusion matrix")
