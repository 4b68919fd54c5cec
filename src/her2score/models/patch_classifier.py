"""The patch classifier (input kind ``bag``): tiles classified one by one with their slide's label as a
weak tile label, fused to the slide by mean probability, majority vote or a top-percentile rule. The
class lives in :mod:`her2score.models.nets.patch_classifier`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.patch_classifier import TileClassifier


@register_model(
    "patch-classifier",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("tile probability",),
    description="Tile classifier on tile features (slide label as weak tile label), fused: mean, majority "
    "or top-percentile.",
)
def patch_classifier(
    num_classes: int,
    in_dim: int = 768,
    hidden: int = 128,
    dropout: float = 0.25,
    fusion: str = "mean",
    top_percent: float = 10.0,
) -> TileClassifier:
    """Per-tile MLP; ``fusion``: mean, majority or top-percentile (``top_percent`` % of tiles per class)."""
    from her2score.models.nets.patch_classifier import TileClassifier

    return TileClassifier(num_classes, in_dim, hidden, dropout, fusion, top_percent)
