"""``lgd-net``: HER2 from H&E by hallucinating the latent features of an IHC teacher, trained on H&E/IHC
pairs (input kind ``pair``); ``lgd-net-he``: its H&E path, what is saved and predicts from H&E alone.
The classes are in :mod:`her2score.models.nets.lgdnet`, where the design choices are written down."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from her2score.models.registry import register_model

if TYPE_CHECKING:
    from her2score.models.nets.lgdnet import LGDNet, LGDNetHE

#: BCI patches are 1024² px at ~0.5 µm/px: read at 2 µm/px they fill 256 px.
LGD_DATA = {"mpp": 2.0, "input_size": 256, "margin": 0.02}


@register_model(
    "lgd-net",
    tasks=("her2-3way", "her2-4way"),
    input_kind="pair",
    data=LGD_DATA,
    maps=("gradcam",),
    description="LGD-Net: an IHC teacher guides an H&E stream (hallucinated IHC features, nuclei and "
    "membrane auxiliary heads); trained on H&E/IHC pairs, predicts from H&E alone.",
)
def lgd_net(
    num_classes: int,
    backbone: str | None = None,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    norm: str | None = None,
    hallucinated_weight: float = 1.0,
    fused_weight: float = 1.0,
    teacher_weight: float = 1.0,
    align_weight: float = 1.0,
    align_loss: str = "cosine",
    nuclei_weight: float = 0.5,
    membrane_weight: float = 0.5,
    grid: int = 8,
    teacher_mode: str = "joint",
    teacher_warmup_epochs: int = 3,
    knowledge: bool = True,
    knowledge_weight: float = 0.0,
    teacher: str | None = None,
    kd_weight: float = 1.0,
    kd_temperature: float = 2.0,
    knowledge_fit: bool = True,
) -> LGDNet:
    """LGD-Net (ablations: ``align_weight=0``, ``nuclei_weight=0``, ``membrane_weight=0``,
    ``kd_weight=0``); ``teacher``: a saved IHC classifier (``lowres`` family) to load and freeze."""
    from her2score.models.nets.lgdnet import LGDNet

    return LGDNet(
        num_classes, backbone or "resnet18", weights, drop_rate, norm, hallucinated_weight, fused_weight,
        teacher_weight, align_weight, align_loss, nuclei_weight, membrane_weight, grid, teacher_mode,
        teacher_warmup_epochs, knowledge, knowledge_weight, teacher, kd_weight, kd_temperature,
        knowledge_fit,
    )  # fmt: skip


@register_model(
    "lgd-net-he",
    tasks=("her2-3way", "her2-4way"),
    input_kind="lowres",
    data=LGD_DATA,
    maps=("gradcam",),
    description="The H&E path of a trained lgd-net (H&E encoder, hallucinated IHC features, fused head).",
)
def lgd_net_he(
    num_classes: int,
    backbone: str | None = None,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    norm: str | None = None,
    knowledge: bool = True,
    teacher_dim: int | None = None,
    knowledge_fit: bool = True,
) -> LGDNetHE:
    """The H&E path of LGD-Net (saved by a trained ``lgd-net``; trained alone it lacks the teacher)."""
    from her2score.models.nets.lgdnet import LGDNetHE

    return LGDNetHE(
        num_classes, backbone or "resnet18", weights, drop_rate, norm, knowledge, teacher_dim, knowledge_fit
    )
