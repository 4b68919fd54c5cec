"""The contract between a model and the engine: what a model computes, not how training runs.

Every registered model is a :class:`SlideModel`. The engine (loop, predictor, checkpoints) only ever
calls these methods, so a model with another input (bags of tile features, H&E/IHC pairs) or another
loss (instance clustering, distillation, auxiliary heads) overrides a method instead of copying the
loop:

* :meth:`training_step` -> ``(loss, logs)``; by default the engine's cross-entropy on :meth:`logits`;
* :meth:`predict_step` -> class probabilities; :meth:`explain` -> an optional map (Grad-CAM, attention);
* :meth:`on_fit_start` -> a hook before the first epoch with the training data (a head fitted in
  closed form, statistics, a teacher trained first); :meth:`on_fit_end` -> a hook on the kept weights
  with the validation data (a fusion weight chosen there); :meth:`baselines` -> simpler models inside;
* :meth:`inference_module` -> the module that is saved and predicts (a distilled model saves only
  the path it needs at inference), rebuilt from its registry name and :meth:`build_kwargs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitContext:
    """What :meth:`SlideModel.on_fit_start` may use: the prepared cohort, its training rows and labels."""

    kind: Any  # the InputKind
    prepared: Any  # its Prepared inputs
    train: np.ndarray  # positions (into ``prepared``) of the training rows
    labels: np.ndarray  # integer labels of every prepared row
    stats: dict[str, Any]  # normalisation statistics
    device: Any
    log: Callable[[str], None] = print
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # validation rows

    def val_batches(self, batch_size: int = 32) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        """The validation rows as un-augmented inference batches with their labels."""
        for start in range(0, len(self.val), batch_size):
            idx = self.val[start : start + batch_size]
            batch = self.kind.batch(self.prepared, idx, self.stats, self.device, inference=True)
            yield batch, torch.as_tensor(self.labels[idx], device=self.device)

    def batches(self, batch_size: int = 32) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        """The training rows as un-augmented batches with their labels."""
        for start in range(0, len(self.train), batch_size):
            idx = self.train[start : start + batch_size]
            batch = self.kind.batch(self.prepared, idx, self.stats, self.device)
            yield batch, torch.as_tensor(self.labels[idx], device=self.device)


class SlideModel(nn.Module):
    """Base class of every her2score model (see the module docstring for the contract)."""

    #: The batch key :meth:`logits` feeds to ``forward`` (``forward`` takes tensors: exportable).
    input_key: str = "image"
    #: Registry name and constructor arguments, set by ``create_model`` (so the engine can rebuild it).
    registry_name: str = ""
    init_kwargs: dict[str, Any]

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class logits for a batch (the fused model's, when a model fuses several heads)."""
        return self(batch[self.input_key])

    def trainable_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the default loss is applied to (the parts trained by gradient descent)."""
        return self.logits(batch)

    def training_step(self, batch: dict[str, Any], loss_fn: LossFn) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch (labels in ``batch["label"]``) and named numbers to log."""
        loss = loss_fn(self.trainable_logits(batch).float(), batch["label"])
        return loss, {}

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class probabilities (B, K)."""
        return torch.softmax(self.logits(batch).float(), dim=1)

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        """A map of where the evidence lies for the first item of ``batch`` (0..1) and the class it
        explains; None when the model has none."""
        return None

    def on_fit_start(self, ctx: FitContext) -> str | None:
        """Called once before the first epoch (not on resume); returns a line for the log, if any."""
        return None

    def on_fit_end(self, ctx: FitContext) -> str | None:
        """Called on the kept weights after training, with the validation rows in ``ctx.val`` (a choice
        made on validation: a fusion weight, a calibration); returns a line for the log, if any."""
        return None

    def baselines(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Probabilities of simpler models inside this one (e.g. a stain head alone), by name, so that
        a report can show them beside the model's own."""
        return {}

    def inference_module(self) -> SlideModel:
        """The module to save and predict with (itself unless part of it is needed only to train)."""
        return self

    def build_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module's architecture (weights come from the
        checkpoint, so a pretrained-weights file is never needed again)."""
        kwargs = dict(getattr(self, "init_kwargs", {}))
        kwargs.pop("weights", None)
        return kwargs


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    features: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[np.ndarray, int]:
    """Grad-CAM (0..1, one value per feature cell) of the first image of ``x`` for the class ``model``
    predicts, on the feature map ``features(x)`` whose logits are ``head(feature map)``.

    The target is the whole model's prediction (with a fused head, not the CNN's alone), explained on
    the part of it that has a spatial map.
    """
    x = x[:1].detach()
    model.eval()
    with torch.no_grad():
        target = int(model(x).argmax(1)[0])
    with torch.enable_grad():
        feats = features(x)
        feats.retain_grad()
        logits = head(feats)
        model.zero_grad(set_to_none=True)
        logits[0, target].backward()
    weights = feats.grad[0].mean(dim=(1, 2))  # one weight per channel
    cam = torch.relu((weights[:, None, None] * feats[0]).sum(0)).detach().float().cpu().numpy()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam), target
