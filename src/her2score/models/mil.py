"""``abmil``: gated-attention multiple-instance learning on bags of tile features (input kind ``bag``);
the class is :class:`her2score.models.nets.mil.GatedAttentionMIL`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.mil import GatedAttentionMIL


@register_model(
    "abmil",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("attention",),
    description="Gated attention pooling of tile features (Ilse et al. 2018), one linear classifier.",
)
def abmil(num_classes: int, in_dim: int = 768, hidden: int = 128, dropout: float = 0.25) -> GatedAttentionMIL:
    """Attention-based MIL over a bag of tile features (``in_dim``: the feature size of the extractor)."""
    from her2score.models.nets.mil import GatedAttentionMIL

    return GatedAttentionMIL(num_classes, in_dim, hidden, dropout)
