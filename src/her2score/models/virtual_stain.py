"""``virtual-stain``: the virtual-staining baseline of LGD-Net, a pix2pix-style generator (H&E -> IHC,
L1 + PatchGAN loss) whose output an IHC classifier scores, trained on H&E/IHC pairs (input kind
``pair``); ``virtual-stain-he``: what is saved and predicts from H&E alone (generator and scorer). The
classes are in :mod:`her2score.models.nets.pix2pix`, where the design choices are written down."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from her2score.models.lgdnet import LGD_DATA
from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.pix2pix import VirtualStain, VirtualStainHE


@register_model(
    "virtual-stain",
    tasks=("her2-3way", "her2-4way"),
    input_kind="pair",
    data=LGD_DATA,
    description="Virtual staining then scoring: a pix2pix U-Net (L1 + PatchGAN) turns H&E into IHC, an "
    "IHC classifier (a trained checkpoint, or one trained beside it) scores it; predicts from H&E.",
)
def virtual_stain(
    num_classes: int,
    scorer: str | Path | None = None,
    l1_weight: float = 100.0,
    adversarial_weight: float = 1.0,
    base_channels: int = 16,
    depth: int = 5,
) -> VirtualStain:
    """pix2pix H&E -> IHC, then an IHC classifier (``scorer``: its model.safetensors, frozen)."""
    from her2score.models.nets.pix2pix import VirtualStain

    return VirtualStain(num_classes, scorer, l1_weight, adversarial_weight, base_channels, depth)


@register_model(
    "virtual-stain-he",
    tasks=("her2-3way", "her2-4way"),
    input_kind="lowres",
    data=LGD_DATA,
    description="The saved part of a trained virtual-stain: generator and IHC scorer, from H&E alone.",
)
def virtual_stain_he(
    num_classes: int,
    base_channels: int = 16,
    depth: int = 5,
    scorer_model: str = "lowres-resnet",
    scorer_kwargs: dict[str, Any] | None = None,
) -> VirtualStainHE:
    """Generator + IHC scorer (saved by a trained ``virtual-stain``)."""
    from her2score.models.nets.pix2pix import VirtualStainHE

    return VirtualStainHE(num_classes, base_channels, depth, scorer_model, scorer_kwargs)
