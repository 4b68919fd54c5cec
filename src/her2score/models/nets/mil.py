"""Multiple-instance models on bags of tile features (input kind ``bag``).

``abmil``: gated attention pooling (Ilse, Tomczak and Welling, ICML 2018). Each tile feature gets an
attention score from a gated two-layer network; the slide is the attention-weighted mean of its tiles,
classified by one linear layer. The attention weights are its map (which tiles decided).

``mean-mil``: the mean of projected tiles, one linear layer (the baseline every attention model must beat);
its map is each tile's contribution to the predicted class's logit.

``clam-sb``: CLAM single-branch (Lu et al., Nat. Biomed. Eng. 2021): gated attention as ``abmil``, plus
one instance classifier per class trained on the most and least attended tiles (pseudo-labels: the
top-k tiles of the true class are positive, its bottom-k negative; the top-k under every other class's
instance classifier are negative). Its ``training_step`` adds that instance loss to the engine's loss.

``transmil``: TransMIL (Shao et al., NeurIPS 2021) simplified: a class token and two pre-norm transformer
layers with full softmax attention (not the Nyström approximation: bags here hold at most a few thousand
tiles) and, between them, PPEG (depth-wise 7/5/3 convolutions over the tiles laid row by row on a square,
the order ``tile_grid`` reads them in); ``ppeg=False`` leaves it out. Its map is the class token's
attention in the last layer.

``dsmil``: DSMIL (Li, Li and Eliceiri, CVPR 2021): an instance classifier scores every tile per class;
the top tile of each class is its critical instance, and every tile is weighted by the similarity of
its query to that critical instance's; the slide logit is the mean of the max-instance head and the
attention head (each trained with the engine's loss, half and half). Its map is the attention for the
predicted class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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


def _first(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:1] for k, v in batch.items() if hasattr(v, "__getitem__")}


def _peak_one(values: torch.Tensor) -> np.ndarray:
    """A per-tile map scaled to 0..1 (minimum 0, peak 1)."""
    w = values.detach().float().cpu().numpy()
    w = w - float(w.min())
    return w / max(float(w.max()), 1e-12)


def _real(mask: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return mask


class MeanPoolMIL(SlideModel):
    """Mean of projected tiles (over the real ones of ``mask``), one linear classifier."""

    input_key = "features"

    def __init__(self, num_classes: int, in_dim: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        real = _real(mask, features).unsqueeze(-1).to(features.dtype)
        h = self.project(features) * real
        return self.classifier(h.sum(1) / real.sum(1).clamp_min(1.0))

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["features"], batch.get("mask"))

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """Each tile's contribution to the predicted class's logit (scaled to 0..1) and that class."""
        first = _first(batch)
        with torch.no_grad():
            target = int(self.logits(first).argmax(1)[0])
            per_tile = self.classifier(self.project(first["features"][0]))[:, target]
        return _peak_one(per_tile), target


class ClamSingleBranch(GatedAttentionMIL):
    """CLAM-SB: gated attention pooling and per-class instance classifiers on the top/bottom-k tiles."""

    def __init__(
        self,
        num_classes: int,
        in_dim: int,
        hidden: int = 128,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
    ) -> None:
        super().__init__(num_classes, in_dim, hidden, dropout)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(num_classes)])
        self.k_sample = int(k_sample)
        self.bag_weight = float(bag_weight)

    def instance_loss(self, weights: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        """Mean cross-entropy of the instance classifiers on their pseudo-labelled tiles, over the batch."""
        losses = []
        for b in range(h.shape[0]):
            real = mask[b]
            w, tiles = weights[b][real], h[b][real]
            k = min(self.k_sample, len(w) // 2)
            if k < 1:
                continue
            top = torch.topk(w, k).indices
            bottom = torch.topk(-w, k).indices
            for c, classifier in enumerate(self.instance_classifiers):
                if c == int(labels[b]):  # in the class: most attended positive, least attended negative
                    x = torch.cat([tiles[top], tiles[bottom]])
                    y = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(x.device)
                else:  # another class's classifier: what this bag attends to most is not that class
                    x, y = tiles[top], torch.zeros(k, dtype=torch.long, device=tiles.device)
                losses.append(F.cross_entropy(classifier(x), y))
        if not losses:
            return h.new_zeros(())
        return torch.stack(losses).mean()

    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        features = batch["features"]
        mask = _real(batch.get("mask"), features)
        weights, h = self.attention(features, mask)
        bag = loss_fn(self.classifier((weights.unsqueeze(-1) * h).sum(1)).float(), batch["label"])
        instance = self.instance_loss(weights, h, mask, batch["label"])
        loss = self.bag_weight * bag + (1.0 - self.bag_weight) * instance
        return loss, {"instance_loss": float(instance.detach())}


def ppeg_square(tokens: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
    """PPEG: the ``n`` tokens (n, C) of one bag laid row by row on a ceil(sqrt(n)) square (zeros after
    the last), passed through depth-wise convolutions added to themselves, read back in the same order."""
    n, c = tokens.shape
    side = max(1, math.ceil(math.sqrt(n)))
    grid = torch.zeros(side * side, c, dtype=tokens.dtype, device=tokens.device)
    grid[:n] = tokens
    grid = grid.t().reshape(1, c, side, side)
    grid = grid + sum(conv(grid) for conv in convs)
    return grid.reshape(c, side * side).t()[:n]


class _TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm1(x)
        y, weights = self.attn(y, y, y, key_padding_mask=padding, need_weights=True)
        x = x + y
        return x + self.mlp(self.norm2(x)), weights


class TransMIL(SlideModel):
    """A class token and two transformer layers over the tiles (PPEG between them), linear head."""

    input_key = "features"

    def __init__(
        self,
        num_classes: int,
        in_dim: int,
        hidden: int = 128,
        heads: int = 4,
        dropout: float = 0.1,
        ppeg: bool = True,
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        nn.init.normal_(self.cls_token, std=0.02)
        self.layer1 = _TransformerLayer(hidden, heads, dropout)
        self.layer2 = _TransformerLayer(hidden, heads, dropout)
        self.ppeg = (
            nn.ModuleList([nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden) for k in (7, 5, 3)])
            if ppeg
            else None
        )
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def encode(self, features: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class token (B, H), its last-layer attention over the tiles (B, N))``."""
        real = _real(mask, features)
        h = self.project(features) * real.unsqueeze(-1).to(features.dtype)
        x = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        padding = torch.cat([torch.zeros_like(real[:, :1]), ~real], dim=1)
        x, _ = self.layer1(x, padding)
        if self.ppeg is not None:
            # per bag, over its real tiles (a batch pads bags at the end), so padding changes nothing
            tiles = torch.zeros_like(x[:, 1:])
            for b, n in enumerate(real.sum(1).tolist()):
                tiles[b, :n] = ppeg_square(x[b, 1 : 1 + n], self.ppeg)
            x = torch.cat([x[:, :1], tiles], dim=1)
        x, weights = self.layer2(x, padding)
        return self.norm(x[:, 0]), weights[:, 0, 1:]

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.encode(features, mask)[0])

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["features"], batch.get("mask"))

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The class token's last-layer attention over the first bag's tiles (0..1), predicted class."""
        first = _first(batch)
        with torch.no_grad():
            token, weights = self.encode(first["features"], first.get("mask"))
            target = int(self.classifier(token).argmax(1)[0])
        w = weights[0].float().cpu().numpy()
        return w / max(float(w.max()), 1e-12), target


class DualStreamMIL(SlideModel):
    """DSMIL: a max-instance head and a critical-instance attention head, their logits averaged."""

    input_key = "features"

    def __init__(
        self, num_classes: int, in_dim: int, hidden: int = 128, query: int = 64, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.instance_classifier = nn.Linear(hidden, num_classes)
        self.query = nn.Sequential(nn.Linear(hidden, query), nn.Tanh())
        self.value = nn.Linear(hidden, hidden)
        # one bag score per class from that class's bag embedding (DSMIL's Conv1d over the classes)
        self.bag_classifier = nn.Conv1d(num_classes, num_classes, kernel_size=hidden)

    def heads(self, features: torch.Tensor, mask: torch.Tensor | None) -> tuple[Any, Any, Any]:
        """``(max-instance logits (B, K), bag logits (B, K), attention (B, N, K))``."""
        real = _real(mask, features)
        h = self.project(features)
        scores = self.instance_classifier(h).masked_fill(~real.unsqueeze(-1), float("-inf"))  # B N K
        top_scores, critical = scores.max(dim=1)  # B K
        q = self.query(h)  # B N Q
        q_critical = torch.gather(q, 1, critical.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # B K Q
        similarity = torch.einsum("bnq,bkq->bnk", q, q_critical) / math.sqrt(q.shape[-1])
        attention = torch.softmax(similarity.masked_fill(~real.unsqueeze(-1), float("-inf")), dim=1)
        bag = torch.einsum("bnk,bnh->bkh", attention, self.value(h))  # B K H
        return top_scores, self.bag_classifier(bag).squeeze(-1), attention

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        top, bag, _ = self.heads(features, mask)
        return (top + bag) / 2

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["features"], batch.get("mask"))

    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        top, bag, _ = self.heads(batch["features"], batch.get("mask"))
        instance = loss_fn(top.float(), batch["label"])
        loss = 0.5 * instance + 0.5 * loss_fn(bag.float(), batch["label"])
        return loss, {"instance_loss": float(instance.detach())}

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The attention of the first bag's tiles for its predicted class (0..1) and that class."""
        first = _first(batch)
        with torch.no_grad():
            top, bag, attention = self.heads(first["features"], first.get("mask"))
            target = int(((top + bag) / 2).argmax(1)[0])
        w = attention[0, :, target].float().cpu().numpy()
        return w / max(float(w.max()), 1e-12), target
