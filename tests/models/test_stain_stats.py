"""The stain-statistics head: features from DAB/H optical density, a fitted (not trained) regression."""

from __future__ import annotations

import numpy as np
import torch

from her2score.models.nets.stain_stats import N_LEGACY, QUANTILES, StainStatistics, stain_features
from her2score.models.registry import create_model
from her2score.stain.deconvolution import combine_stains


def _slides(dab_levels: list[float], seed: int) -> torch.Tensor:
    """uint8 (N, 3, 48, 48): tissue (hematoxylin + DAB at the given OD) left, white glass right."""
    rng = np.random.default_rng(seed)
    out = []
    for level in dab_levels:
        h = np.where(np.arange(48)[None, :] < 30, 0.4, 0.0) * np.ones((48, 1))
        d = np.where(h > 0, rng.gamma(2.0, level / 2.0, size=h.shape), 0.0)
        rgb = combine_stains({"hematoxylin": h.astype(np.float32), "dab": d.astype(np.float32)})
        out.append(torch.as_tensor(rgb).permute(2, 0, 1))
    return torch.stack(out)


def test_features_read_dab_over_tissue_only() -> None:
    weak, strong = _slides([0.05], 0), _slides([0.4], 0)
    f_weak, f_strong = stain_features(weak.float() / 255), stain_features(strong.float() / 255)
    k = len(QUANTILES)
    assert (f_strong[0, 1:k] > f_weak[0, 1:k]).all()  # more DAB, higher DAB quantiles
    median = k + QUANTILES.index(0.5)
    assert abs(float(f_weak[0, median]) - 0.4) < 0.05  # hematoxylin median of the tissue, glass left out
    assert abs(float(f_weak[0, -1]) - 30 / 48) < 0.05  # tissue fraction: the glass columns left out
    blank = torch.full((1, 3, 32, 32), 1.0)
    assert (stain_features(blank) == 0).all()  # no tissue: zeros, not NaN


def test_fit_separates_dab_levels_and_is_frozen() -> None:
    levels = [0.02, 0.15, 0.5]
    labels = np.repeat([0, 1, 2], 6)
    train = _slides([levels[c] for c in labels], seed=1)
    head = StainStatistics(3)
    accuracy = head.fit(train, labels, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert accuracy == 1.0
    assert not any(p.requires_grad for p in head.parameters())
    test = _slides([levels[c] for c in labels], seed=2)
    x = (test.float() / 255 - 0.5) / 0.25  # normalised like the CNN's input
    assert (head(x).argmax(1).numpy() == labels).all()


def test_classifier_averages_cnn_and_stain_probabilities() -> None:
    torch.manual_seed(0)
    model = create_model("lowres-resnet", 3, stain_head=True).eval()
    labels = np.repeat([0, 1, 2], 4)
    model.stain_stats.fit(_slides([[0.02, 0.15, 0.5][c] for c in labels], 3), labels, [0.5] * 3, [0.25] * 3)
    x = (_slides([0.02, 0.5], 4).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        fused = model(x).softmax(1)
        cnn = model.trainable_logits({"image": x}).softmax(1)
        stains = model.stain_stats(x).softmax(1)
    assert torch.allclose(fused, (cnn + stains) / 2, atol=1e-5)
    assert "stain_stats.linear.weight" in model.state_dict()  # travels in model.safetensors


def test_head_of_an_old_checkpoint_loads_with_its_nine_features() -> None:
    old = StainStatistics(3, feature_set="dab-h")
    labels = np.repeat([0, 1, 2], 6)
    old.fit(_slides([[0.02, 0.15, 0.5][c] for c in labels], 1), labels, [0.5] * 3, [0.25] * 3)
    assert old.linear.in_features == N_LEGACY
    new = StainStatistics(3)
    assert new.linear.in_features != N_LEGACY
    state = old.state_dict()
    state.pop("feature_set_index")  # checkpoints from before the feature sets lack it
    new.load_state_dict(state, strict=True)
    assert new.feature_set == "dab-h"
    glass = StainStatistics(3, feature_set="colour-od-glass")
    loaded = StainStatistics(3)
    loaded.load_state_dict(glass.state_dict())
    assert loaded.feature_set == "colour-od-glass"  # the saved index, not the width, decides
    x = (_slides([0.02, 0.5], 4).float() / 255 - 0.5) / 0.25
    assert torch.allclose(new(x), old(x))


def test_l2_strength_is_chosen_by_inner_cross_validation() -> None:
    labels = np.repeat([0, 1, 2], 6)
    head = StainStatistics(3)
    head.fit(_slides([[0.02, 0.15, 0.5][c] for c in labels], 1), labels, [0.5] * 3, [0.25] * 3)
    assert "inner cross-validation" in head.fit_note
    few = StainStatistics(3)
    few.fit(_slides([0.02, 0.15, 0.5], 1), np.array([0, 1, 2]), [0.5] * 3, [0.25] * 3)
    assert "too few" in few.fit_note


def test_glass_normalised_features_ignore_the_scanners_white_balance() -> None:
    from her2score.models.nets.stain_stats import glass_normalised

    rgb = _slides([0.2], 0).float() / 255 * 0.97  # glass at 0.97, not pure white (padding)
    tinted = rgb * torch.tensor([1.0, 0.95, 0.88]).view(1, 3, 1, 1)  # a warm scanner
    plain, warm = stain_features(rgb, glass=True), stain_features(tinted, glass=True)
    assert torch.allclose(plain, warm, atol=0.02)
    assert not torch.allclose(stain_features(rgb), stain_features(tinted), atol=0.02)  # without: it shows
    tissue_only = torch.full((1, 3, 16, 16), 0.5)
    assert torch.allclose(glass_normalised(tissue_only), tissue_only)  # no glass in view: left alone
