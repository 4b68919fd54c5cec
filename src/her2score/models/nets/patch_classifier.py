"""A tile classifier fused to the slide (input kind ``bag``): the usual patch-based pipeline where no
slide-level aggregator is learned.

Every tile is classified on its own by a small network over its features (an MLP on the tile encoder's
output); training gives each tile its slide's label (a weak label: a 3+ slide has unstained stroma too)
and averages the cross-entropy over the real tiles of the batch. The slide's probabilities are then a
fixed rule over its tiles' probabilities:

* ``mean``: the mean tile probability per class;
* ``majority``: the fraction of tiles whose most probable class is each class (a vote);
* ``top-percentile``: per class, the mean of its ``top_percent`` highest tile probabilities,
  renormalised to sum to 1 (a few strongly stained tiles can carry the slide, as in ASCO/CAP's
  "more than 10 % of tumour cells").

``forward`` returns the log of the fused probabilities, so the engine's softmax gives them back
unchanged. Its map is each tile's probability of the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from her2score.models.base import SlideModel

FUSIONS = ("mean", "majority", "top-percentile")


class TileClassifier(SlideModel):
    """A per-tile MLP over ``features`` (B, N, D), ``mask`` (B, N) marking real tiles, fused by ``fusion``."""

    input_key = "features"

    def __init__(
        self,
        num_classes: int,
        in_dim: int,
        hidden: int = 128,
        dropout: float = 0.25,
        fusion: str = "mean",
        top_percent: float = 10.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if not 0 < top_percent <= 100:
            raise ValueError(f"top_percent must be in (0, 100], not {top_percent}")
        self.fusion, self.top_percent = fusion, float(top_percent)
        self.tile_head = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def tile_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities of every tile (B, N, K)."""
        return torch.softmax(self.tile_head(features).float(), dim=-1)

    def fuse(self, probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Slide probabilities (B, K) from tile probabilities (B, N, K) over the real tiles of ``mask``."""
        real = mask.unsqueeze(-1).to(probs.dtype)
        count = real.sum(1).clamp_min(1.0)
        if self.fusion == "mean":
            return (probs * real).sum(1) / count
        if self.fusion == "majority":
            votes = nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
            return (votes * real).sum(1) / count
        # top-percentile: the k = ceil(top_percent % of the real tiles) highest per class
        ranked = probs.masked_fill(~mask.unsqueeze(-1), -1.0).sort(dim=1, descending=True).values
        k = torch.ceil(count * self.top_percent / 100.0).clamp(1.0, probs.shape[1])  # (B, 1)
        rank = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype).view(1, -1, 1)
        keep = (rank < k.unsqueeze(1)).to(probs.dtype)
        top = (ranked.clamp_min(0.0) * keep).sum(1) / k
        return top / top.sum(1, keepdim=True).clamp_min(1e-12)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return torch.log(self.fuse(self.tile_probabilities(features), mask).clamp_min(1e-8))

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["features"], batch.get("mask"))

    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The engine's loss over every real tile, each labelled with its slide's class."""
        features = batch["features"]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        tile_logits = self.tile_head(features)[mask].float()  # (M, K): the real tiles of every bag
        labels = batch["label"].unsqueeze(1).expand(mask.shape)[mask]
        loss = loss_fn(tile_logits, labels)
        with torch.no_grad():
            tile_accuracy = float((tile_logits.argmax(1) == labels).float().mean())
        return loss, {"tile_accuracy": tile_accuracy}

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The first bag's tile probabilities of its predicted class (0..1) and that class."""
        features = batch["features"][:1]
        mask = batch.get("mask")
        mask = mask[:1] if mask is not None else torch.ones(features.shape[:2], dtype=torch.bool)
        with torch.no_grad():
            probs = self.tile_probabilities(features)
            target = int(self.fuse(probs, mask).argmax(1)[0])
        return probs[0, :, target].cpu().numpy().astype(np.float32), target
