"""``lowres-convnext`` and ``lowres-resnet``: a timm backbone on the whole tissue at low resolution
(IPD-Breast). The classes are in :mod:`her2score.models.nets.lowres`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.lowres import LowResClassifier

_LOWRES_DATA = {"mpp": 8.0, "input_size": 224, "margin": 0.02}


@register_model(
    "lowres-convnext",
    input_kind="lowres",
    data=_LOWRES_DATA,
    maps=("gradcam",),
    description="Whole tissue at 8-16 µm/px into a timm ConvNeXt (IPD-Breast); any timm backbone by name.",
)
def lowres_convnext(
    num_classes: int,
    backbone: str | None = None,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    norm: str | None = None,
    stain_head: bool = False,
) -> LowResClassifier:
    """Whole-slide low-resolution ConvNeXt classifier (``stain_head``: see :mod:`.nets.stain_stats`)."""
    from her2score.models.nets.lowres import LowResClassifier

    return LowResClassifier(num_classes, backbone, weights, drop_rate, norm, stain_head)


@register_model(
    "lowres-resnet",
    input_kind="lowres",
    data=_LOWRES_DATA,
    maps=("gradcam",),
    description="Whole tissue at low resolution into a timm ResNet-18 (a classic baseline).",
)
def lowres_resnet(
    num_classes: int,
    backbone: str | None = None,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    norm: str | None = None,
    stain_head: bool = False,
) -> LowResClassifier:
    """Whole-slide low-resolution ResNet baseline (its own BatchNorm; ``norm`` applies to ConvNeXt only)."""
    from her2score.models.nets.lowres import LowResClassifier

    return LowResClassifier(num_classes, backbone or "resnet18", weights, drop_rate, norm, stain_head)
