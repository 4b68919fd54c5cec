"""``lowres-convnext``: a timm backbone classifying the whole tissue at low resolution (IPD-Breast).

The backbone is any timm architecture by name (ConvNeXt by default: ``convnext_tiny`` on a GPU,
``convnext_atto`` on a CPU). timm is always asked for ``pretrained=False``: weights come only from a
local file (safetensors, or a timm/PyTorch checkpoint read with ``weights_only=True``), never from the
network. Without a file the model trains from scratch, and says so.

Normalisation: ConvNeXt's LayerNorm normalises each image on its own. A low-resolution slide is mostly
glass and stroma, and what separates HER2 0 from low is a faint shift of colour that every image shares
almost entirely; per-image normalisation leaves that difference too small to learn from a few hundred
slides (from scratch, convnext_atto stayed at chance: train loss at ln 3 after 40 epochs). BatchNorm
normalises across the batch, so the differences *between* slides are what reaches the next layer, and
the same ConvNeXt (patchify stem, 7x7 depthwise convolutions, inverted bottlenecks, layer scale) learns.
``norm="auto"`` therefore takes BatchNorm from scratch and LayerNorm with pretrained weights, which were
trained with it; the choice is saved in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import CheckpointError, ConfigError
from her2score.models.base import FitContext, SlideModel, grad_cam
from her2score.models.nets.stain_stats import StainStatistics

CPU_BACKBONE = "convnext_atto"
GPU_BACKBONE = "convnext_tiny"


def default_backbone() -> str:
    """``convnext_tiny`` when CUDA is available, ``convnext_atto`` otherwise."""
    import torch

    return GPU_BACKBONE if torch.cuda.is_available() else CPU_BACKBONE


NORMS = ("auto", "batch", "layer")


def resolve_norm(norm: str | None, weights: str | Path | None) -> str:
    """``auto`` -> ``batch`` from scratch, ``layer`` with pretrained weights (see the module docstring)."""
    norm = norm or "auto"
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    if norm == "auto":
        return "layer" if weights else "batch"
    return norm


def build_backbone(
    num_classes: int, backbone: str | None, weights: str | Path | None, drop_rate: float, norm: str | None
) -> tuple[Any, str, str | None, str]:
    """A timm network (never downloaded), its name, the resolved norm and a note on its weights."""
    import timm

    name = backbone or default_backbone()
    if Path(str(name)).suffix in {".safetensors", ".pth", ".pt", ".bin"}:
        raise ConfigError(f"backbone must be a timm architecture name, not a file ({name}); use weights=")
    extra: dict[str, Any] = {}
    resolved_norm = None
    if name.startswith("convnext"):
        resolved_norm = resolve_norm(norm, weights)
        if resolved_norm == "batch":
            # conv_mlp keeps every norm on (B, C, H, W), where BatchNorm2d applies
            extra.update(norm_layer="batchnorm2d", conv_mlp=True)
        if weights is None:
            # ConvNeXt starts its residual branches at 1e-6 (layer scale), tuned for long ImageNet runs:
            # from scratch on a few hundred steps the blocks would stay near identity.
            extra["ls_init_value"] = 1.0
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **extra)
    except RuntimeError as exc:  # timm: unknown model
        raise ConfigError(f"timm has no architecture {name!r} ({exc})") from exc
    note = load_backbone_weights(net, weights) if weights else "training from scratch"
    return net, name, resolved_norm, note


#: Fusion weights of the CNN tried on validation; the stain head alone (0) is kept unless another
#: lowers the validation log-loss by FUSION_MARGIN nats below the stain head alone *and* below the
#: stain head mixed with the class prior by the same weights; with fewer than MIN_FUSION_VAL slides, 0.5.
FUSION_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
FUSION_MARGIN = 0.02
MIN_FUSION_VAL = 4


def choose_fusion_weight(p_cnn: Any, p_stain: Any, y: Any) -> tuple[float, str]:
    """The CNN's weight of least log-loss among FUSION_GRID; any weight above 0 must beat by
    FUSION_MARGIN nats the best mixture of the stain head with a constant, the class prior of ``y``
    (weight 0 among them: the stain head alone). Returns the weight and the losses, written out.

    Why the constant: a stain head fitted on a few dozen slides is often overconfident, and mixing in
    anything near-uniform lowers its log-loss; a CNN that learned nothing is near-uniform, so on
    log-loss alone it won a share for calibration only, and its noise then moved the predicted classes
    (measured on fresh cohorts: README, Recipes). The CNN is credited only with what a constant cannot do.
    """
    import torch

    y = torch.as_tensor(y)
    prior = torch.bincount(y, minlength=p_stain.shape[1]).to(p_stain.dtype) / max(1, len(y))

    def loss(w: float, other: Any) -> float:
        mix = (w * other + (1 - w) * p_stain).clamp_min(1e-8)
        return float(torch.nn.functional.nll_loss(torch.log(mix), y))

    losses = {w: loss(w, p_cnn) for w in FUSION_GRID}
    constant = {w: loss(w, prior.expand_as(p_stain)) for w in FUSION_GRID if w < 1}
    floor = min(constant.values())
    best = min(losses, key=lambda w: (losses[w], w))
    if losses[best] > floor - FUSION_MARGIN:
        best = 0.0
    shown = ", ".join(f"{w:g}: {v:.3f}" for w, v in losses.items())
    mixed = min(constant, key=lambda w: (constant[w], w))
    return best, f"log-loss {shown}; stain head with the class prior at best {floor:.3f} (prior {mixed:g})"


def mixture_log_probs(cnn_logits: Any, other_logits: Any, weight: Any) -> Any:
    """The log of ``weight`` * the CNN's class probabilities + (1 - ``weight``) * the other head's: a
    fused model's output (log-probabilities: softmax gives the mixture back)."""
    import torch

    probs = weight * cnn_logits.float().softmax(1) + (1 - weight) * other_logits.float().softmax(1)
    return torch.log(probs.clamp_min(1e-12))


def validation_probabilities(model: Any, ctx: FitContext, cnn: Any, other: Any) -> tuple[Any, Any, Any]:
    """Class probabilities of ``cnn`` and of ``other`` (each: a batch of images -> logits) on
    ``ctx.val``, with the labels, on the CPU: what :func:`choose_fusion_weight` chooses from."""
    import torch

    model.eval()
    p_cnn, p_other, labels = [], [], []
    with torch.no_grad():
        for batch, y in ctx.val_batches():
            p_cnn.append(torch.softmax(cnn(batch["image"]).float(), 1))
            p_other.append(torch.softmax(other(batch["image"]).float(), 1))
            labels.append(y)
    return torch.cat(p_cnn).cpu(), torch.cat(p_other).cpu(), torch.cat(labels).cpu()


class LowResClassifier(SlideModel):
    """A timm backbone on the whole low-resolution tissue, split into features (last conv stage, for
    Grad-CAM) and head; with ``stain_head``, a stain-statistics model (:mod:`.stain_stats`) fitted
    before training and averaged with the CNN's probabilities."""

    def __init__(
        self,
        num_classes: int,
        backbone: str | None = None,
        weights: str | Path | None = None,
        drop_rate: float = 0.0,
        norm: str | None = None,
        stain_head: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.backbone_name, self.norm, self.weights_note = build_backbone(
            num_classes, backbone, weights, drop_rate, norm
        )
        self.drop_rate = drop_rate
        self.stain_stats = StainStatistics(num_classes) if stain_head else None
        import torch

        # weight of the CNN in the fusion with the stain head, chosen on validation (on_fit_end)
        self.register_buffer("fusion_weight", torch.tensor(0.5))

    def build_kwargs(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "drop_rate": self.drop_rate,
            "norm": self.norm,
            "stain_head": self.stain_stats is not None,
        }

    def features(self, x: Any) -> Any:
        return self.backbone.forward_features(x)

    def head(self, feats: Any) -> Any:
        return self.backbone.forward_head(feats)

    def trainable_logits(self, batch: dict[str, Any]) -> Any:
        """The CNN alone (the stain head is fitted in closed form, not trained)."""
        return self.head(self.features(batch["image"]))

    def forward(self, x: Any) -> Any:
        logits = self.head(self.features(x))
        if self.stain_stats is None:
            return logits
        return mixture_log_probs(logits, self.stain_stats(x), self.fusion_weight.to(logits.dtype))

    def baselines(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        if self.stain_stats is None:
            return {}
        return {"stain statistics alone": torch.softmax(self.stain_stats(batch["image"]).float(), 1)}

    def fusion_parts(self, ctx: FitContext) -> tuple[Any, Any, Any] | None:
        """Probabilities of the CNN alone and of the stain head alone on ``ctx.val``, with the labels
        (None without a stain head): what the fusion weight is chosen from."""
        if self.stain_stats is None:
            return None
        return validation_probabilities(self, ctx, lambda x: self.head(self.features(x)), self.stain_stats)

    def on_fit_end(self, ctx: FitContext) -> str | None:
        """Choose the CNN's weight in the fusion on validation (:func:`choose_fusion_weight`), so that
        the fused model is never worse than its own baseline there."""
        if self.stain_stats is None:
            return None
        if len(ctx.val) < MIN_FUSION_VAL:
            return (
                f"fusion weight not chosen on validation ({len(ctx.val)} validation slides): "
                f"{float(self.fusion_weight):.2f} unless inner cross-validation sets it"
            )
        p_cnn, p_stain, y = self.fusion_parts(ctx)
        best, shown = choose_fusion_weight(p_cnn, p_stain, y)
        self.fusion_weight.fill_(best)
        return f"fusion weight of the CNN chosen on {len(ctx.val)} validation slides: {best:g} ({shown})"

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints from before the fusion weight was chosen averaged the two halves equally."""
        import torch

        state_dict.setdefault(prefix + "fusion_weight", torch.tensor(0.5))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_fit_start(self, ctx: FitContext) -> str | None:
        if self.stain_stats is None:
            return None
        images = ctx.prepared.items
        accuracy = self.stain_stats.fit(
            images[ctx.train], ctx.labels[ctx.train], ctx.stats["mean"], ctx.stats["std"]
        )
        return (
            f"stain-statistics head fitted on {len(ctx.train)} slides (training accuracy {accuracy:.2f}; "
            f"{self.stain_stats.fit_note})"
        )

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """Grad-CAM on the last convolutional stage for the fused model's predicted class."""
        return grad_cam(self, batch["image"], self.features, self.head)


def load_backbone_weights(net: Any, path: str | Path) -> str:
    """Load local weights into ``net`` (classifier head skipped when its shape differs); say what happened."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    try:
        if is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", path) from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError("no tensors found in the weights file", path)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = net.state_dict()
    kept = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not kept:
        raise CheckpointError(f"no tensor matches the {type(net).__name__} architecture", path)
    net.load_state_dict(kept, strict=False)
    skipped = len(own) - len(kept)
    return f"weights from {path.name} ({len(kept)} tensors loaded, {skipped} left at initialisation)"


def is_safetensors(path: Path) -> bool:
    """True when the file's content is safetensors (8-byte header length, then a JSON header)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"
