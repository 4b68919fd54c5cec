"""A stain-statistics head: logistic regression on the slide's DAB and hematoxylin distribution.

HER2 IHC is read from how much brown (DAB) the tumour membranes carry; at 8-20 µm/px that shows up as a
shift of the whole DAB distribution over the tissue. A linear model on quantiles of that distribution
is a strong, interpretable prior that a CNN trained from scratch on a few dozen slides does not reliably
find by itself (README, Results). The hematoxylin quantiles let it read DAB relative to the counterstain,
which varies with the lab like DAB does.

The head is *not* trained by gradient descent with the network: it is fitted to convergence (a convex
problem: scikit-learn's L-BFGS logistic regression) on the training slides before the first epoch,
then frozen; the classifier averages its class probabilities with the CNN's. Its weights, the feature
standardisation and the input normalisation it needs to recover RGB are buffers/parameters of the
module, so they travel in ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from her2score.optics import rgb_to_od
from her2score.stain.deconvolution import HDAB

#: Quantiles of DAB optical density over the tissue pixels of the low-resolution input.
DAB_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
#: Quantiles of hematoxylin optical density (the counterstain, a reference for the lab's staining).
HEMATOXYLIN_QUANTILES = (0.50, 0.90)
#: A pixel is tissue when its mean RGB is below this (glass and the white padding are brighter).
TISSUE_MAX_BRIGHTNESS = 215
#: Pixels used per image for the quantiles at most (strided subsampling keeps large inputs cheap).
MAX_PIXELS = 65_536
#: Inverse L2 strength of the logistic regression (as scikit-learn's C: penalty ||w||² / 2C).
C = 1.0


def stain_features(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 9) DAB and hematoxylin OD quantiles over the tissue pixels."""
    b, _, h, w = rgb.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_PIXELS))))
    rgb = rgb[:, :, ::step, ::step].float()
    tissue = rgb.mean(1) * 255 < TISSUE_MAX_BRIGHTNESS
    od = rgb_to_od(rgb * 255)
    inv = torch.as_tensor(np.linalg.inv(HDAB.matrix()), dtype=rgb.dtype, device=rgb.device)
    conc = torch.einsum("bchw,cd->bdhw", od, inv).clamp_min(0)
    out = []
    for channel, quantiles in ((1, DAB_QUANTILES), (0, HEMATOXYLIN_QUANTILES)):
        values = torch.where(tissue, conc[:, channel], torch.nan).reshape(b, -1)
        q = torch.as_tensor(quantiles, dtype=rgb.dtype, device=rgb.device)
        out.append(torch.nanquantile(values, q, dim=1).T)
    return torch.nan_to_num(torch.cat(out, dim=1), nan=0.0)  # an image without tissue: all zeros


class StainStatistics(nn.Module):
    """Frozen logistic regression on :func:`stain_features`; call :meth:`fit` before training."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        k = len(DAB_QUANTILES) + len(HEMATOXYLIN_QUANTILES)
        self.linear = nn.Linear(k, num_classes)
        self.linear.requires_grad_(False)
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_std", torch.ones(3))
        self.register_buffer("feature_mean", torch.zeros(k))
        self.register_buffer("feature_std", torch.ones(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch normalised like the CNN's input."""
        rgb = x.float() * self.input_std.view(1, 3, 1, 1) + self.input_mean.view(1, 3, 1, 1)
        z = (stain_features(rgb.clamp(0, 1)) - self.feature_mean) / self.feature_std
        return self.linear(z)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, labels: np.ndarray, mean: Any, std: Any) -> float:
        """Fit on ``images`` (N, 3, H, W uint8) and integer ``labels``, class-balanced (scikit-learn's
        L-BFGS logistic regression); returns the training accuracy."""
        from sklearn.linear_model import LogisticRegression

        device = self.linear.weight.device
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        batches = [images[i : i + 64].to(device).float() / 255 for i in range(0, len(images), 64)]
        feats = torch.cat([stain_features(b) for b in batches])
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
        self.feature_mean.copy_(mu)
        self.feature_std.copy_(sd)
        z = ((feats - mu) / sd).cpu().double().numpy()
        y = np.asarray(labels, dtype=np.int64)
        k = self.linear.out_features
        weight = np.zeros((k, z.shape[1]))
        bias = np.zeros(k)
        present = np.unique(y)
        if len(present) == 1:  # one class: it always wins
            bias[:] = -30.0
            bias[present[0]] = 0.0
        else:
            lr = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, tol=1e-8)
            lr.fit(z, y)
            coef, intercept = lr.coef_, lr.intercept_
            if len(present) == 2:  # scikit-learn's binary form: one score for the second class
                coef = np.vstack([np.zeros_like(coef), coef])
                intercept = np.concatenate([[0.0], intercept])
            weight[present], bias[:] = coef, -30.0  # a class absent from training never wins
            bias[present] = intercept
        self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        zt = torch.as_tensor(z, dtype=torch.float32, device=device)
        return float((self.linear(zt).argmax(1).cpu().numpy() == y).mean())
