"""Multiple-instance models on bags of tile features (input kind ``bag``).

``abmil``: gated attention pooling (Ilse, Tomczak and Welling, ICML 2018). Each tile feature gets an
attention score from a gated two-layer network; the slide is the attention-weighted mean of its tiles,
classified by one linear layer. The attention weights are its map (which tiles decided).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from her2score.models.base import SlideModel


class GatedAttentionMIL(SlideModel):
    """Gated-attention pooling of a bag ``features`` (B, N, D) with a ``mask`` (B, N) of real tiles."""

    input_key = "features"

    def __init__(self, num_classes: int, in_dim: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def attention(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Any, Any]:
        """``(weights (B, N) summing to 1 over real tiles, projected tiles (B, N, H))``."""
        h = self.project(features)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h)))
        scores = scores.squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1), h

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        weights, h = self.attention(features, mask)
        return self.classifier((weights.unsqueeze(-1) * h).sum(1))

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["features"], batch.get("mask"))

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The attention weights of the first bag's tiles (scaled to a peak of 1) and its predicted class."""
        first = {k: v[:1] for k, v in batch.items()}
        with torch.no_grad():
            weights, _ = self.attention(first["features"], first.get("mask"))
            target = int(self.logits(first).argmax(1)[0])
        w = weights[0].float().cpu().numpy()
        return w / max(float(w.max()), 1e-12), target
