"""Multiple-instance models on bags of tile features (input kind ``bag``): ``abmil``, ``mean-mil``,
``clam-sb``, ``transmil``, ``dsmil``; the classes live in :mod:`her2score.models.nets.mil`.

Each takes ``in_dim``, the feature size of the extractor that wrote the bags (``her2score features``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.mil import (
        ClamSingleBranch,
        DualStreamMIL,
        GatedAttentionMIL,
        MeanPoolMIL,
        TransMIL,
    )


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


@register_model(
    "mean-mil",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("attention",),
    description="Mean pooling of projected tile features, one linear classifier (the MIL baseline).",
)
def mean_mil(num_classes: int, in_dim: int = 768, hidden: int = 128, dropout: float = 0.25) -> MeanPoolMIL:
    """Mean pooling over a bag of tile features."""
    from her2score.models.nets.mil import MeanPoolMIL

    return MeanPoolMIL(num_classes, in_dim, hidden, dropout)


@register_model(
    "clam-sb",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("attention",),
    description="CLAM single-branch (Lu et al. 2021): gated attention + instance loss on top/bottom-k tiles.",
)
def clam_sb(
    num_classes: int,
    in_dim: int = 768,
    hidden: int = 128,
    dropout: float = 0.25,
    k_sample: int = 8,
    bag_weight: float = 0.7,
) -> ClamSingleBranch:
    """CLAM-SB; ``k_sample`` tiles per end of the attention ranking, ``bag_weight`` of the slide loss."""
    from her2score.models.nets.mil import ClamSingleBranch

    return ClamSingleBranch(num_classes, in_dim, hidden, dropout, k_sample, bag_weight)


@register_model(
    "transmil",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("attention",),
    description="TransMIL (Shao et al. 2021), simplified: class token, 2 transformer layers, square PPEG.",
    exportable=False,  # PPEG lays each bag out by its own tile count: a traced graph would fix one count
)
def transmil(
    num_classes: int,
    in_dim: int = 768,
    hidden: int = 128,
    heads: int = 4,
    dropout: float = 0.1,
    ppeg: bool = True,
) -> TransMIL:
    """A small transformer over the tiles with a class token (full attention; PPEG optional)."""
    from her2score.models.nets.mil import TransMIL

    return TransMIL(num_classes, in_dim, hidden, heads, dropout, ppeg)


@register_model(
    "dsmil",
    input_kind="bag",
    data={"max_instances": 2048},
    maps=("attention",),
    description="DSMIL (Li et al. 2021): max-instance head + critical-instance attention head, averaged.",
)
def dsmil(
    num_classes: int, in_dim: int = 768, hidden: int = 128, query: int = 64, dropout: float = 0.25
) -> DualStreamMIL:
    """Dual-stream MIL: an instance classifier's top tile per class drives the attention of the bag head."""
    from her2score.models.nets.mil import DualStreamMIL

    return DualStreamMIL(num_classes, in_dim, hidden, query, dropout)
