"""Plots and heatmaps: real PNG files, written atomically, and overlays that colour only tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2score.report.heatmap import heatmap_figure, overlay_heatmap
from her2score.report.plots import plot_confusion, plot_roc, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert min(image.size) > 100
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def predictions(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_plot_roc_writes_png(tmp_path, k):
    y, probs = predictions(120, k, seed=k)
    classes = [f"class {i}" for i in range(k)]
    out = plot_roc(y, probs, classes, tmp_path / "roc.png", title="held-out slides")
    assert out == tmp_path / "roc.png"
    assert_png(out)


def test_plot_roc_tolerates_an_absent_class(tmp_path):
    y, probs = predictions(60, 3)
    keep = y != 1
    assert_png(plot_roc(y[keep], probs[keep], ["0", "low", "high"], tmp_path / "roc.png"))


def test_plot_confusion_writes_png(tmp_path):
    confusion = [[10, 2, 0], [3, 8, 1], [0, 0, 0]]  # an empty true class must not divide by zero
    for normalize in (True, False):
        out = plot_confusion(
            confusion, ["0", "low", "high"], tmp_path / f"cm_{normalize}.png", normalize=normalize
        )
        assert_png(out)


def test_plot_confusion_checks_shape(tmp_path):
    with pytest.raises(ValueError, match="3x3"):
        plot_confusion([[1, 2], [3, 4]], ["0", "low", "high"], tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_plot_training_curves(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.1 / e,
            "val_f1_macro": 1 - 1 / (e + 1),
            "lr": 1e-3 / e,
        }
        for e in range(1, 6)
    ]
    history[2]["val_auc_macro"] = 0.8  # a metric missing from some epochs is drawn where present
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves([], tmp_path / "none.png")


def slide_like(height: int = 120, width: int = 200):
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = ((yy - height / 2) / (height * 0.4)) ** 2 + ((xx - width / 2) / (width * 0.4)) ** 2 < 1
    rgb = np.full((height, width, 3), 240, np.uint8)
    rgb[tissue] = (170, 120, 150)
    return rgb, tissue


def test_overlay_colours_only_inside_the_mask():
    rgb, tissue = slide_like()
    heat = np.random.default_rng(0).random((7, 7))
    out = overlay_heatmap(rgb, heat, alpha=0.5, mask=tissue)
    assert out.shape == rgb.shape
    assert out.dtype == np.uint8
    assert np.array_equal(out[~tissue], rgb[~tissue])
    assert np.abs(out[tissue].astype(int) - rgb[tissue]).sum(axis=1).mean() > 20


def test_overlay_puts_the_hot_spot_where_the_heat_is():
    rgb = np.full((100, 100, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 3] = 5.0  # top-right cell, in arbitrary units
    out = overlay_heatmap(rgb, heat, alpha=1.0).astype(int)
    top_right, bottom_left = out[5, 95], out[95, 5]
    # jet: the hottest value is dark red, the coldest dark blue.
    assert top_right[0] > 100
    assert top_right[1] < 40
    assert top_right[2] < 40
    assert bottom_left[2] > 100
    assert bottom_left[0] < 40


def test_overlay_alpha_zero_and_bad_input():
    rgb, _ = slide_like()
    assert np.array_equal(overlay_heatmap(rgb, np.ones((3, 3)), alpha=0.0), rgb)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(rgb, np.ones((3, 3)), alpha=1.5)
    with pytest.raises(ValueError, match="2-D"):
        overlay_heatmap(rgb, np.ones((3, 3, 3)))


def test_overlay_leaves_nan_heat_uncoloured():
    rgb = np.full((40, 40, 3), 200, np.uint8)
    heat = np.full((40, 40), np.nan)
    heat[:20] = np.linspace(0, 1, 40)[None, :]
    out = overlay_heatmap(rgb, heat, alpha=0.6)
    assert np.array_equal(out[20:], rgb[20:])
    assert not np.array_equal(out[:20], rgb[:20])


def test_heatmap_figure_writes_png(tmp_path):
    rgb, tissue = slide_like()
    heat = np.random.default_rng(1).random((12, 20))
    assert_png(heatmap_figure(rgb, heat, tmp_path / "heat.png", "slide 7: Grad-CAM", mask=tissue))
