"""A stain-statistics head: logistic regression on the slide's colour and optical-density distribution.

HER2 IHC is read from how much brown (DAB) the tumour membranes carry; at 8-20 µm/px that shows up as a
shift of the whole DAB distribution over the tissue. A linear model on quantiles of that distribution
is a strong, interpretable prior that a CNN trained from scratch on a few dozen slides does not reliably
find by itself (README, Results). The hematoxylin quantiles let it read DAB relative to the counterstain,
which varies with the lab like DAB does. Deconvolution assumes one lab's stain vectors, so the
``colour-od`` features add the tissue quantiles of the raw optical density of each channel and of the
red and blue chromaticity, which read brown against blue whatever the vectors and the scanner's tone:
on a cohort from another renderer such a regression reached 0.97 macro AUC (issue 15).

The head is *not* trained by gradient descent with the network: it is fitted to convergence (a convex
problem: scikit-learn's L-BFGS logistic regression, its L2 strength chosen by inner cross-validation on
the training slides) before the first epoch, then frozen; the classifier mixes its class probabilities
with the CNN's by a fusion weight chosen on validation or by inner cross-validation. Its weights, the
feature standardisation and the input normalisation it needs to recover RGB are buffers/parameters of
the module, so they travel in ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from her2score.optics import rgb_to_od
from her2score.stain.deconvolution import HDAB

#: Quantiles of every per-pixel channel over the tissue pixels of the low-resolution input.
QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
#: The per-pixel channels of the ``colour-od`` features, in order: DAB and hematoxylin concentration
#: (colour deconvolution), optical density of red, green and blue, and the red and blue chromaticity
#: (share of the pixel's brightness). Each gives ``len(QUANTILES)`` features; the tissue fraction ends
#: the vector. Deconvolution alone trusts one lab's stain vectors; the raw OD and chromaticity read
#: brown against blue whatever the vectors and scanner tone (a cohort from another renderer, README).
CHANNELS = ("dab", "hematoxylin", "od_red", "od_green", "od_blue", "chroma_red", "chroma_blue")
N_FEATURES = len(CHANNELS) * len(QUANTILES) + 1
#: The features of checkpoints before ``colour-od``: 7 DAB and 2 hematoxylin quantiles.
LEGACY_DAB_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
LEGACY_HEMATOXYLIN_QUANTILES = (0.50, 0.90)
N_LEGACY = len(LEGACY_DAB_QUANTILES) + len(LEGACY_HEMATOXYLIN_QUANTILES)
FEATURE_SETS = ("colour-od", "dab-h", "colour-od-glass")
#: ``colour-od-glass``: the same features after dividing each channel by the slide's own glass colour
#: (the median of its brightest GLASS_SHARE non-padding pixels), which undoes the scanner's white
#: balance and glass brightness before optical density is taken. The default: it was at least as good as
#: ``colour-od`` on every cohort and held-out site measured, and better than ``dab-h`` within cohorts
#: (README, Results, recipes).
GLASS_SHARE = 0.05
#: Brightness below which the "glass" found is taken for tissue (no glass in view): no normalisation.
MIN_GLASS = 0.75
DEFAULT_FEATURE_SET = "colour-od-glass"
#: A pixel is tissue when its mean RGB is below this (glass and the white padding are brighter), or below
#: the image's own glass (its 99th brightness percentile) by GLASS_MARGIN when that is darker (a darker
#: scanner tone), but never below MIN_TISSUE_THRESHOLD.
TISSUE_MAX_BRIGHTNESS = 215
GLASS_MARGIN = 20
MIN_TISSUE_THRESHOLD = 170
#: Pixels used per image for the quantiles at most (strided subsampling keeps large inputs cheap).
MAX_PIXELS = 65_536
#: Inverse L2 strengths (as scikit-learn's C: penalty ||w||² / 2C) tried by inner cross-validation on
#: the training slides; DEFAULT_C when there are too few slides per class to cross-validate.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_C = 1.0
#: Inner folds for the choice of C at most (fewer when a class has fewer slides).
INNER_FOLDS = 5


def _subsample(rgb: torch.Tensor) -> torch.Tensor:
    _, _, h, w = rgb.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_PIXELS))))
    return rgb[:, :, ::step, ::step].float()


def _concentrations(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optical density (B, 3, H, W) and hematoxylin/DAB/residual concentrations (B, 3, H, W)."""
    od = rgb_to_od(rgb * 255)
    inv = torch.as_tensor(np.linalg.inv(HDAB.matrix()), dtype=rgb.dtype, device=rgb.device)
    return od, torch.einsum("bchw,cd->bdhw", od, inv).clamp_min(0)


def _tissue(rgb: torch.Tensor) -> torch.Tensor:
    b = rgb.shape[0]
    bright = rgb.mean(1) * 255
    glass = torch.quantile(bright.reshape(b, -1), 0.99, dim=1) - GLASS_MARGIN
    threshold = glass.clamp(MIN_TISSUE_THRESHOLD, TISSUE_MAX_BRIGHTNESS)
    return bright < threshold.view(b, 1, 1)


def _tissue_quantiles(values: torch.Tensor, tissue: torch.Tensor, quantiles: tuple[float, ...]) -> Any:
    b = values.shape[0]
    masked = torch.where(tissue, values, torch.nan).reshape(b, -1)
    q = torch.as_tensor(quantiles, dtype=values.dtype, device=values.device)
    return torch.nanquantile(masked, q, dim=1).T


def glass_normalised(rgb: torch.Tensor) -> torch.Tensor:
    """RGB divided per channel by the image's glass colour (padding, pure white, left out)."""
    b = rgb.shape[0]
    flat = rgb.reshape(b, 3, -1)
    padding = (flat >= 1 - 1e-3).all(1, keepdim=True)
    bright = torch.where(padding, torch.nan, flat.mean(1, keepdim=True))
    cut = torch.nanquantile(bright, 1 - GLASS_SHARE, dim=2, keepdim=True)
    glass_px = (bright >= cut).expand_as(flat)
    # the median of the glass pixels (nanquantile, not nanmedian: ONNX has no nanmedian)
    glass = torch.nanquantile(torch.where(glass_px, flat, torch.nan), 0.5, dim=2)
    glass = torch.nan_to_num(glass, nan=1.0)
    # no glass in view (the tissue fills the crop): the brightest pixels are tissue; leave the image be
    glass = torch.where(glass.mean(1, keepdim=True) < MIN_GLASS, torch.ones_like(glass), glass)
    return (rgb / glass.clamp_min(MIN_GLASS).view(b, 3, 1, 1)).clamp(0, 1)


def stain_features(rgb: torch.Tensor, glass: bool = False) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, N_FEATURES) tissue quantiles of :data:`CHANNELS` and the
    tissue fraction (the ``colour-od`` features; with ``glass``, of :func:`glass_normalised` RGB)."""
    rgb = _subsample(rgb)
    if glass:
        rgb = glass_normalised(rgb)
    tissue = _tissue(rgb)
    od, conc = _concentrations(rgb)
    total = rgb.sum(1) + 1e-3
    channels = (conc[:, 1], conc[:, 0], od[:, 0], od[:, 1], od[:, 2], rgb[:, 0] / total, rgb[:, 2] / total)
    out = [_tissue_quantiles(c, tissue, QUANTILES) for c in channels]
    out.append(tissue.float().mean((1, 2))[:, None])
    return torch.nan_to_num(torch.cat(out, dim=1), nan=0.0)  # an image without tissue: all zeros


def legacy_stain_features(rgb: torch.Tensor) -> torch.Tensor:
    """The 9 ``dab-h`` features of checkpoints before ``colour-od``: DAB and hematoxylin quantiles
    over pixels darker than TISSUE_MAX_BRIGHTNESS."""
    rgb = _subsample(rgb)
    tissue = rgb.mean(1) * 255 < TISSUE_MAX_BRIGHTNESS
    _, conc = _concentrations(rgb)
    out = [
        _tissue_quantiles(conc[:, 1], tissue, LEGACY_DAB_QUANTILES),
        _tissue_quantiles(conc[:, 0], tissue, LEGACY_HEMATOXYLIN_QUANTILES),
    ]
    return torch.nan_to_num(torch.cat(out, dim=1), nan=0.0)


def choose_c(z: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """The L2 strength of least inner cross-validated log-loss (stratified folds over the training
    slides, class-balanced), and a note; DEFAULT_C when a class has fewer than 2 slides."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = min(INNER_FOLDS, int(counts[counts > 0].min()))
    if folds < 2:
        return DEFAULT_C, f"C={DEFAULT_C:g} (too few slides per class for inner cross-validation)"
    k = int(y.max()) + 1
    losses = {}
    for c in C_GRID:
        total = 0.0
        for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
            lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, tol=1e-6).fit(z[tr], y[tr])
            probs = np.full((len(va), k), 1e-8)
            probs[:, lr.classes_] = np.clip(lr.predict_proba(z[va]), 1e-8, 1)
            total += float(-np.log(probs[np.arange(len(va)), y[va]]).sum())
        losses[c] = total / len(y)
    best = min(losses, key=lambda c: (losses[c], -c))
    return best, f"C={best:g} by {folds}-fold inner cross-validation (log-loss {losses[best]:.3f})"


class StainStatistics(nn.Module):
    """Frozen logistic regression on :func:`stain_features`; call :meth:`fit` before training.

    ``feature_set`` is one of :data:`FEATURE_SETS`, saved as a buffer; ``dab-h`` (9 features) is what
    checkpoints from before ``colour-od`` hold. Loading a state switches to its set.
    """

    def __init__(self, num_classes: int, feature_set: str = DEFAULT_FEATURE_SET) -> None:
        super().__init__()
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {', '.join(FEATURE_SETS)}, not {feature_set!r}")
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_std", torch.ones(3))
        self._build(num_classes, feature_set)
        self.fit_note = ""

    def _build(self, num_classes: int, feature_set: str) -> None:
        """(Re)create the regression and feature standardisation for ``feature_set``."""
        self.feature_set = feature_set
        k = N_LEGACY if feature_set == "dab-h" else N_FEATURES
        self.linear = nn.Linear(k, num_classes)
        self.linear.requires_grad_(False)
        # which feature set, by its index in FEATURE_SETS: travels in the checkpoint
        self.register_buffer("feature_set_index", torch.tensor(FEATURE_SETS.index(feature_set)))
        self.register_buffer("feature_mean", torch.zeros(k))
        self.register_buffer("feature_std", torch.ones(k))

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """The features of this head's feature set for RGB in [0, 1]."""
        if self.feature_set == "dab-h":
            return legacy_stain_features(rgb)
        return stain_features(rgb, glass=self.feature_set == "colour-od-glass")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch normalised like the CNN's input."""
        rgb = x.float() * self.input_std.view(1, 3, 1, 1) + self.input_mean.view(1, 3, 1, 1)
        z = (self.features(rgb.clamp(0, 1)) - self.feature_mean) / self.feature_std
        return self.linear(z)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A state of the other feature set (by its width) rebuilds this head with that set."""
        weight = state_dict.get(prefix + "linear.weight")
        index = state_dict.get(prefix + "feature_set_index")
        if index is not None:
            wanted = FEATURE_SETS[int(index)]
        elif weight is not None and weight.shape[1] == N_LEGACY:
            wanted = "dab-h"  # a checkpoint from before the feature sets
            state_dict[prefix + "feature_set_index"] = torch.tensor(FEATURE_SETS.index(wanted))
        else:
            wanted = self.feature_set
        if wanted != self.feature_set:
            self._build(self.linear.out_features, wanted)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, labels: np.ndarray, mean: Any, std: Any) -> float:
        """Fit on ``images`` (N, 3, H, W uint8) and integer ``labels``: standardised features, a
        class-balanced L2 logistic regression (scikit-learn's L-BFGS) whose strength is chosen by
        inner cross-validation over these slides (:func:`choose_c`, noted in ``fit_note``); returns
        the training accuracy."""
        device = self.linear.weight.device
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        batches = [images[i : i + 64].to(device).float() / 255 for i in range(0, len(images), 64)]
        feats = torch.cat([self.features(b) for b in batches])
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
        self.feature_mean.copy_(mu)
        self.feature_std.copy_(sd)
        z = ((feats - mu) / sd).cpu().double().numpy()
        y = np.asarray(labels, dtype=np.int64)
        self.fit_note = fit_linear(self.linear, z, y)
        zt = torch.as_tensor(z, dtype=torch.float32, device=device)
        return float((self.linear(zt).argmax(1).cpu().numpy() == y).mean())


@torch.no_grad()
def fit_linear(linear: nn.Linear, z: np.ndarray, y: np.ndarray) -> str:
    """Set ``linear`` (features -> class logits) to a class-balanced L2 logistic regression on
    standardised features ``z`` and integer labels ``y`` (scikit-learn's L-BFGS, fitted to convergence,
    its strength chosen by inner cross-validation, :func:`choose_c`); a class absent from ``y`` never
    wins. Returns a note saying how the strength was chosen."""
    from sklearn.linear_model import LogisticRegression

    k = linear.out_features
    weight = np.zeros((k, z.shape[1]))
    bias = np.zeros(k)
    present = np.unique(y)
    if len(present) == 1:  # one class: it always wins
        bias[:] = -30.0
        bias[present[0]] = 0.0
        note = "one class in training"
    else:
        c, note = choose_c(z, y)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, tol=1e-8)
        lr.fit(z, y)
        coef, intercept = lr.coef_, lr.intercept_
        if len(present) == 2:  # scikit-learn's binary form: one score for the second class
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        weight[present], bias[:] = coef, -30.0  # a class absent from training never wins
        bias[present] = intercept
    linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
    linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    return note
