"""LGD-Net: HER2 from H&E by hallucinating the latent features of an IHC teacher (Zhu et al., 2026).

Only the abstract is public; where it is silent the choices below are ours (and measured in
``her2score benchmark bci``):

* **Two encoders of the same kind** (a timm backbone, ``resnet18`` by default, from scratch or a local
  weights file): one reads the H&E image, the teacher reads the paired IHC image.
* **Hallucination**: a 1x1-convolution stack (conv, BatchNorm, ReLU, conv) maps the H&E feature map
  into the teacher's latent space, position by position, so that the spatial membrane head can read it.
* **Classifiers**: one on the pooled hallucinated features, one on the fused features (pooled H&E
  concatenated with pooled hallucinated); the fused one predicts (with the knowledge head, below). The
  teacher has its own.
* **Domain knowledge in the prediction** (``knowledge=True``, default): six nuclear statistics of the
  H&E input (:func:`nuclear_statistics`), standardised on the training images, feed a linear head.
  With ``knowledge_fit=True`` (default) that head is not left to gradient descent, which in a dozen
  epochs at the CNN's learning rate leaves a linear model on six standardised features far from its
  optimum: before the first epoch it is set to a class-balanced L2 logistic regression fitted to
  convergence on the training images' statistics (the stain head's fitter,
  :func:`~her2score.models.nets.stain_stats.fit_linear`, strength by inner cross-validation) and
  frozen; the fused classifier trains alone, and after training the prediction mixes the two heads'
  class probabilities, the fused classifier's weight chosen on validation by the stain head's rule
  (:func:`~her2score.models.nets.lowres.choose_fusion_weight`). On three development cohorts this
  moved LGD-Net's gain over H&E-only from +2.5 to +5.7 macro-F1 points on average, on three fresh
  cohorts with many more staining sites it gained +0.2, -6.4 and +0.3 (README, "LGD-Net").
  ``knowledge_fit=False`` (and checkpoints from before): the head's logits add to the fused
  classifier's and it trains with the network. ``knowledge_weight`` adds a cross-entropy on that head
  alone in that mode (off by default: not better).
* **Losses** (every weight a factory option): cross-entropy on the hallucinated, fused and teacher
  logits (the engine's class-weighted loss), latent alignment of the pooled hallucinated features to
  the pooled, *detached* teacher features (``cosine``: 1 - cos, scale-free so the teacher cannot
  shrink it by shrinking its features, or ``mse``), and two auxiliary regressions on standardised
  targets (see :func:`auxiliary_targets`): the nuclei-density map of the H&E image from the H&E
  features, and the membrane DAB map and its tissue mean from the hallucinated features.
* **Teacher schedule**: ``teacher=PATH`` loads a saved IHC classifier of the ``lowres`` family (the
  ``ihc-only`` run of ``her2score benchmark bci``, trained to its best validation epoch by the engine)
  and freezes it: the paper's "IHC teacher trained first" (``lgd-net-ihc-teacher`` in the benchmark; on
  four synthetic cohorts no better than the joint teacher, README "LGD-Net"). Without it, ``joint``
  (default) trains the
  teacher beside the student from the first step; ``frozen-after-warmup`` trains it alone on IHC for
  ``teacher_warmup_epochs`` epochs before the first epoch (un-augmented batches) and then freezes it
  (BatchNorm in eval mode). The alignment target is always detached, so the student never drags the
  teacher towards H&E.
* **Distillation of the teacher's reading** (``kd_weight``, ``kd_temperature``): with a frozen teacher,
  the fused and hallucinated logits also match the teacher's softened class probabilities on the
  paired IHC (KL divergence at temperature T, times T², Hinton et al. 2015): per patch, the teacher
  reads the staining itself, where the label is the slide's; a teacher still learning (``joint``) gives
  no distillation target.

The auxiliary targets are computed from the batch tensors in each training step, after augmentation:
a geometric augmentation (flip, rotation, affine) moves the coarse maps with the image, which targets
cached per row before augmentation would not. They are cheap (one 3x3 matrix per pixel and a pooling).
Before the first epoch they are computed once on the un-augmented training images, to standardise them
(mean and std per target, kept as buffers, so a resumed run uses the same scale) and to log a summary.

At inference only :class:`LGDNetHE` is saved: H&E encoder, hallucination and classifiers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from her2score.errors import ConfigError
from her2score.models.base import FitContext, SlideModel, grad_cam
from her2score.models.nets.lowres import (
    MIN_FUSION_VAL,
    build_backbone,
    choose_fusion_weight,
    mixture_log_probs,
    validation_probabilities,
)

TEACHER_MODES = ("joint", "frozen-after-warmup")  # with ``teacher=PATH`` the loaded teacher is frozen
ALIGN_LOSSES = ("cosine", "mse")
#: Hematoxylin concentration (OD) above which a pixel is nuclear: at least NUCLEI_MIN_OD, and at least
#: NUCLEI_ABOVE_MEDIAN above the image's median over tissue (fixed stain vectors let eosin leak into
#: the hematoxylin channel by a different amount in each lab, which the median absorbs).
NUCLEI_MIN_OD = 0.3
NUCLEI_ABOVE_MEDIAN = 0.15
#: Summed optical density above which a pixel is tissue (below: glass or white padding).
TISSUE_OD = 0.15
TARGET_NAMES = ("nuclei_map", "membrane_map", "membrane_mean")


def _concentrations(rgb: torch.Tensor, stains: str) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) stain concentrations (OD), by colour deconvolution."""
    from her2score.stain.deconvolution import STAINS

    inv = torch.as_tensor(np.linalg.inv(STAINS[stains].matrix()), dtype=torch.float32, device=rgb.device)
    od = -torch.log10((rgb.float() * 255).clamp(1.0, 255.0) / 255.0)
    return torch.einsum("bchw,cs->bshw", od, inv)


@torch.no_grad()
def auxiliary_targets(he: torch.Tensor, ihc: torch.Tensor, grid: int = 8) -> dict[str, torch.Tensor]:
    """The domain-knowledge targets of a batch of paired images (RGB in [0, 1], (B, 3, H, W)).

    * ``nuclei_map`` (B, grid, grid): the fraction of nuclear pixels in each cell of a coarse grid over
      the H&E image. Nuclear pixels: hematoxylin concentration (H&E colour deconvolution, Ruifrok
      vectors, :mod:`her2score.stain.deconvolution`) above ``max(NUCLEI_MIN_OD, median over tissue +
      NUCLEI_ABOVE_MEDIAN)``.
    * ``membrane_map`` (B, grid, grid): the mean DAB concentration (H-DAB deconvolution of the paired
      IHC image) in each grid cell; at the model's 1-4 µm/px a membrane is under a pixel wide, so this
      is membrane staining blurred with the cytoplasm around it.
    * ``membrane_mean`` (B,): the mean DAB concentration over the IHC tissue pixels (summed OD above
      ``TISSUE_OD``).

    The full quantifier (:mod:`her2score.quantify`: cells, membrane rings, per-cell membrane classes)
    could replace the two DAB targets with per-cell membrane completeness and intensity at 0.5 µm/px;
    it costs seconds per patch instead of milliseconds per batch.
    """
    hema = _concentrations(he, "he")[:, 0]
    tissue_he = -torch.log10((he.float() * 255).clamp(1.0, 255.0) / 255.0).sum(1) > TISSUE_OD
    thresholds = []
    for h, t in zip(hema, tissue_he, strict=True):
        median = h[t].median() if t.any() else h.new_tensor(0.0)
        thresholds.append(torch.clamp(median + NUCLEI_ABOVE_MEDIAN, min=NUCLEI_MIN_OD))
    nuclei = (hema > torch.stack(thresholds).view(-1, 1, 1)).float()
    dab = _concentrations(ihc, "hdab")[:, 1].clamp_min(0)
    tissue = (-torch.log10((ihc.float() * 255).clamp(1.0, 255.0) / 255.0).sum(1) > TISSUE_OD).float()
    return {
        "nuclei_map": F.adaptive_avg_pool2d(nuclei[:, None], grid)[:, 0],
        "membrane_map": F.adaptive_avg_pool2d(dab[:, None], grid)[:, 0],
        "membrane_mean": (dab * tissue).sum((1, 2)) / tissue.sum((1, 2)).clamp_min(1.0),
    }


#: The H&E nuclear statistics the H&E path reads beside its CNN features (``knowledge=True``).
KNOWLEDGE_NAMES = (
    "nuclear_fraction",
    "nuclear_fraction_spread",
    "hema_q50",
    "hema_q75",
    "hema_q90",
    "hema_q99",
)
KNOWLEDGE_QUANTILES = (0.5, 0.75, 0.9, 0.99)


def nuclear_statistics(he: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """(B, 3, H, W) H&E RGB in [0, 1] -> (B, 6) nuclear statistics (:data:`KNOWLEDGE_NAMES`): the
    fraction of nuclear pixels and its spread (std over a ``grid`` x ``grid`` grid of cells), and the
    50/75/90/99th percentiles of the hematoxylin concentration (colour deconvolution, Ruifrok vectors).
    Nuclear pixels: hematoxylin above ``max(NUCLEI_MIN_OD, image median + NUCLEI_ABOVE_MEDIAN)`` (the
    median over the whole image, so that it is one sort per image, without a tissue mask, and exports).
    """
    hema = _concentrations(he, "he")[:, 0]
    flat = hema.flatten(1).sort(dim=1).values
    n = flat.shape[1]
    quantiles = torch.stack([flat[:, min(n - 1, int(q * n))] for q in KNOWLEDGE_QUANTILES], 1)
    threshold = torch.clamp(quantiles[:, 0] + NUCLEI_ABOVE_MEDIAN, min=NUCLEI_MIN_OD)
    nuclei = (hema > threshold.view(-1, 1, 1)).float()
    cells = F.adaptive_avg_pool2d(nuclei[:, None], grid).flatten(1)
    return torch.cat([nuclei.mean((1, 2))[:, None], cells.std(1, unbiased=False)[:, None], quantiles], 1)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def feature_encoder(backbone: str, weights: str | Path | None, drop_rate: float, norm: str | None) -> Any:
    """A timm network without its classifier (``num_classes=0``), never downloaded."""
    return build_backbone(0, backbone, weights, drop_rate, norm)


class LGDNetHE(SlideModel):
    """The H&E path of LGD-Net, what is saved and predicts: H&E encoder, hallucination of the IHC
    teacher's features, and the classifier on the fused (H&E + hallucinated) features; with
    ``knowledge=True`` a linear head on the standardised H&E nuclear statistics
    (:func:`nuclear_statistics`). With ``knowledge_fit=True`` that head is a logistic regression fitted
    before training and frozen, and the prediction mixes its class probabilities with the fused
    classifier's, the fused classifier's weight (``fusion_weight``) chosen on validation after training
    (:func:`~her2score.models.nets.lowres.choose_fusion_weight`, as for the stain head); otherwise (and
    in checkpoints from before, ``fusion_weight`` -1) its logits add to the fused classifier's."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str | Path | None = None,
        drop_rate: float = 0.0,
        norm: str | None = None,
        knowledge: bool = True,
        teacher_dim: int | None = None,
        knowledge_fit: bool = True,
    ) -> None:
        super().__init__()
        self.encoder, self.backbone_name, self.norm, self.weights_note = feature_encoder(
            backbone, weights, drop_rate, norm
        )
        self.drop_rate = drop_rate
        dim = self.encoder.num_features
        self.dim = dim
        # the teacher's latent width (a loaded teacher may be another backbone); default: the H&E width
        self.teacher_dim = tdim = int(teacher_dim or dim)
        self.hallucinate = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, tdim, 1),
        )
        self.dropout = nn.Dropout(drop_rate)
        self.hallucinated_classifier = nn.Linear(tdim, num_classes)
        self.fused_classifier = nn.Linear(dim + tdim, num_classes)
        self.knowledge = knowledge
        self.knowledge_classifier = nn.Linear(len(KNOWLEDGE_NAMES), num_classes) if knowledge else None
        # buffers (saved with the model): the input normalisation, to recover RGB, and the mean and std
        # of each nuclear statistic over the training images, set by on_fit_start
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_std", torch.ones(3))
        self.register_buffer("knowledge_mean", torch.zeros(len(KNOWLEDGE_NAMES)))
        self.register_buffer("knowledge_std", torch.ones(len(KNOWLEDGE_NAMES)))
        # the fused classifier's weight in the mixture with the knowledge head (chosen in on_fit_end);
        # -1: no mixture, the knowledge logits add to the fused ones (knowledge_fit=False, old checkpoints)
        self.register_buffer("fusion_weight", torch.tensor(0.5 if knowledge and knowledge_fit else -1.0))
        self._mix = bool(knowledge and knowledge_fit)  # a Python flag (exports), set from the buffer on load

    @property
    def mixes(self) -> bool:
        """Whether the prediction mixes the fitted knowledge head with the fused classifier."""
        return self.knowledge_classifier is not None and self._mix

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Checkpoints from before the mixture added the knowledge logits to the fused ones."""
        weight = state_dict.setdefault(prefix + "fusion_weight", torch.tensor(-1.0))
        self._mix = bool(float(weight) >= 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def build_kwargs(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "drop_rate": self.drop_rate,
            "norm": self.norm,
            "knowledge": self.knowledge,
            "teacher_dim": self.teacher_dim,
        }

    def knowledge_features(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised nuclear statistics of a normalised H&E batch (B, 6)."""
        rgb = _unnormalise(x, self.input_mean, self.input_std)
        return (nuclear_statistics(rgb) - self.knowledge_mean) / self.knowledge_std

    def on_fit_start(self, ctx: FitContext) -> str | None:
        """Keep the input normalisation and standardise the nuclear statistics on the training images."""
        self.input_mean.copy_(torch.as_tensor(ctx.stats["mean"], dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(ctx.stats["std"], dtype=torch.float32))
        if not self.knowledge:
            return None
        he = ctx.prepared.items["image"][ctx.train]
        stats = torch.cat([nuclear_statistics(he[i : i + 32].float() / 255) for i in range(0, len(he), 32)])
        self.knowledge_mean.copy_(stats.mean(0))
        self.knowledge_std.copy_(
            stats.std(0).clamp_min(1e-3) if len(stats) > 1 else torch.ones_like(stats[0])
        )
        fraction = float(stats[:, 0].mean())
        note = f"H&E nuclear statistics on {len(he)} training images: nuclear fraction {fraction:.3f}"
        if self.mixes:
            from her2score.models.nets.stain_stats import fit_linear

            z = (stats - self.knowledge_mean) / self.knowledge_std
            labels = np.asarray(ctx.labels[ctx.train], dtype=np.int64)
            fitted = fit_linear(self.knowledge_classifier, z.double().numpy(), labels)
            self.knowledge_classifier.requires_grad_(False)
            with torch.no_grad():
                right = int((self.knowledge_classifier(z).argmax(1).numpy() == labels).sum())
            note += (
                f"; knowledge head: a logistic regression fitted and frozen ({fitted}; agrees with "
                f"{right}/{len(labels)} training labels)"
            )
        return note

    def on_fit_end(self, ctx: FitContext) -> str | None:
        """Choose the fused classifier's weight in the mixture with the knowledge head on validation."""
        if not self.mixes:
            return None
        if len(ctx.val) < MIN_FUSION_VAL:
            return (
                f"fusion weight not chosen ({len(ctx.val)} validation images): {float(self.fusion_weight):g}"
            )
        best, shown = choose_fusion_weight(
            *validation_probabilities(
                self,
                ctx,
                lambda x: self.fused_logits(*self.streams(x)),
                lambda x: self.knowledge_classifier(self.knowledge_features(x)),
            )
        )
        self.fusion_weight.fill_(best)
        return (
            f"weight of the fused (H&E + hallucinated) classifier against the nuclear-statistics head, "
            f"chosen on {len(ctx.val)} validation images: {best:g} ({shown})"
        )

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H&E feature map and hallucinated (teacher-space) feature map, both (B, C, h, w)."""
        he = self.encoder.forward_features(x)
        return he, self.hallucinate(he)

    def fused_logits(
        self, he: torch.Tensor, hallucinated: torch.Tensor, knowledge: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The fused classifier's logits; with ``knowledge``, combined with the knowledge head's (the
        log of the mixture of their probabilities, or the sum of logits: see :attr:`mixes`)."""
        logits = self.fused_classifier(self.dropout(torch.cat([_pool(he), _pool(hallucinated)], 1)))
        if self.knowledge_classifier is None or knowledge is None:
            return logits
        prior = self.knowledge_classifier(knowledge.to(logits.dtype))
        if not self.mixes:
            return logits + prior
        return mixture_log_probs(logits, prior, self.fusion_weight.to(logits.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        knowledge = self.knowledge_features(x) if self.knowledge else None
        return self.fused_logits(*self.streams(x), knowledge)

    def baselines(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The nuclear-statistics head alone (the report shows it beside the whole model)."""
        if self.knowledge_classifier is None:
            return {}
        knowledge = self.knowledge_features(batch["image"])
        return {"nuclear statistics alone": torch.softmax(self.knowledge_classifier(knowledge).float(), 1)}

    def explain(self, batch: dict[str, Any]) -> tuple[np.ndarray, int]:
        """Grad-CAM on the H&E feature map for the predicted class of the fused classifier."""
        return grad_cam(
            self,
            batch["image"],
            self.encoder.forward_features,
            lambda he: self.fused_logits(
                he,
                self.hallucinate(he),
                self.knowledge_features(batch["image"][:1]) if self.knowledge else None,
            ),
        )


class LGDNet(SlideModel):
    """LGD-Net in training: the H&E path (:class:`LGDNetHE`), the IHC teacher and the auxiliary heads."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
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
        teacher: str | Path | None = None,
        kd_weight: float = 1.0,
        kd_temperature: float = 2.0,
        knowledge_fit: bool = True,
    ) -> None:
        super().__init__()
        from her2score.models.registry import create_model

        if teacher_mode not in TEACHER_MODES:
            raise ConfigError(f"teacher_mode must be one of {', '.join(TEACHER_MODES)}, not {teacher_mode!r}")
        if align_loss not in ALIGN_LOSSES:
            raise ConfigError(f"align_loss must be one of {', '.join(ALIGN_LOSSES)}, not {align_loss!r}")
        weights_ = (
            hallucinated_weight,
            fused_weight,
            teacher_weight,
            align_weight,
            nuclei_weight,
            membrane_weight,
            knowledge_weight,
            kd_weight,
        )
        if min(weights_) < 0:
            raise ConfigError("loss weights must be >= 0")
        if not 1 <= grid <= 64:
            raise ConfigError(f"grid must be 1-64 cells per side, not {grid}")
        if kd_temperature <= 0:
            raise ConfigError(f"kd_temperature must be > 0, not {kd_temperature}")
        loaded = load_teacher(teacher, num_classes) if teacher else None
        self.student = create_model(
            "lgd-net-he", num_classes, backbone=backbone, weights=weights, drop_rate=drop_rate, norm=norm,
            knowledge=knowledge, teacher_dim=loaded[0].num_features if loaded else None,
            knowledge_fit=knowledge_fit,
        )  # fmt: skip
        self.backbone_name = self.student.backbone_name
        dim = self.student.dim
        if loaded is not None:
            # the saved IHC classifier: its timm network (features, pooling, classifier), frozen
            self.teacher, teacher_stats = loaded
            self.teacher_classifier = self.teacher.get_classifier()
            self.weights_note = f"H&E encoder: {self.student.weights_note}; IHC teacher: {teacher} (frozen)"
        else:
            self.teacher, _, _, _ = feature_encoder(backbone, weights, drop_rate, norm)
            self.teacher_classifier = nn.Linear(dim, num_classes)
            self.weights_note = f"H&E and IHC encoders: {self.student.weights_note}"
        tdim = self.student.teacher_dim
        self.nuclei_head = nn.Conv2d(dim, 1, 1)
        self.membrane_map_head = nn.Conv2d(tdim, 1, 1)
        self.membrane_mean_head = nn.Linear(tdim, 1)
        self.loss_weights = {
            "hallucinated_ce": hallucinated_weight,
            "fused_ce": fused_weight,
            "teacher_ce": teacher_weight,
            "align": align_weight,
            "nuclei": nuclei_weight,
            "membrane": membrane_weight,
            "knowledge_ce": knowledge_weight,
            "kd": kd_weight,
        }
        self.kd_temperature = kd_temperature
        self.align_loss, self.grid = align_loss, grid
        self.teacher_mode, self.teacher_warmup_epochs = teacher_mode, teacher_warmup_epochs
        # buffers, so that a resumed run (no on_fit_start) keeps them: the mean and std of each auxiliary
        # target over the training images, whether the teacher is frozen, and the normalisation of the
        # H&E and IHC inputs (to recover RGB for the targets)
        self.register_buffer("target_mean", torch.zeros(len(TARGET_NAMES)))
        self.register_buffer("target_std", torch.ones(len(TARGET_NAMES)))
        self.register_buffer("teacher_frozen_flag", torch.zeros((), dtype=torch.uint8))
        self.register_buffer("input_mean", torch.zeros(2, 3))
        self.register_buffer("input_std", torch.ones(2, 3))
        # the input normalisation the teacher was trained with (a loaded teacher's own, else this run's)
        self.register_buffer("teacher_mean", torch.zeros(3))
        self.register_buffer("teacher_std", torch.ones(3))
        self.own_teacher_stats = loaded is None
        if loaded is not None:
            self.teacher_mean.copy_(torch.as_tensor(teacher_stats["mean"], dtype=torch.float32))
            self.teacher_std.copy_(torch.as_tensor(teacher_stats["std"], dtype=torch.float32))
            self._freeze_teacher()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def inference_module(self) -> SlideModel:
        return self.student

    def on_fit_end(self, ctx: FitContext) -> str | None:
        return self.student.on_fit_end(ctx)

    def baselines(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.student.baselines(batch)

    def train(self, mode: bool = True) -> LGDNet:
        super().train(mode)
        if self.teacher_frozen:
            self.teacher.eval()  # a frozen teacher keeps its BatchNorm statistics
        return self

    # ------------------------------------------------------------------------------------ fit hooks
    def _standardised(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: (targets[name] - self.target_mean[i]) / self.target_std[i]
            for i, name in enumerate(TARGET_NAMES)
        }

    def on_fit_start(self, ctx: FitContext) -> str | None:
        """Standardise the auxiliary targets on the un-augmented training images; with
        ``teacher_mode="frozen-after-warmup"``, train the teacher on IHC alone and freeze it."""
        items = ctx.prepared.items
        for row, stats in enumerate((ctx.stats, ctx.stats["teacher"])):
            self.input_mean[row] = torch.as_tensor(stats["mean"], dtype=torch.float32)
            self.input_std[row] = torch.as_tensor(stats["std"], dtype=torch.float32)
        if self.own_teacher_stats:
            self.teacher_mean.copy_(self.input_mean[1])
            self.teacher_std.copy_(self.input_std[1])
        he, ihc = items["image"][ctx.train], items["teacher_image"][ctx.train]
        parts = [
            auxiliary_targets(he[i : i + 32].float() / 255, ihc[i : i + 32].float() / 255, self.grid)
            for i in range(0, len(he), 32)
        ]
        targets = {k: torch.cat([p[k] for p in parts]) for k in TARGET_NAMES}
        for i, name in enumerate(TARGET_NAMES):
            values = targets[name].flatten().double()
            self.target_mean[i] = values.mean().float()
            self.target_std[i] = values.std().clamp_min(1e-3).float() if values.numel() > 1 else 1.0
        by_class = []
        labels = ctx.labels[ctx.train]
        for c in np.unique(labels):
            mean = float(targets["membrane_mean"][torch.as_tensor(labels == c)].mean())
            by_class.append(f"class {c}: {mean:.3f}")
        note = (
            f"auxiliary targets on {len(he)} training pairs: nuclear fraction "
            f"{float(self.target_mean[0]):.3f}, "
            f"mean membrane DAB OD by class ({', '.join(by_class)})"
        )
        student_note = self.student.on_fit_start(ctx)
        if student_note:
            note += "; " + student_note
        if not self.own_teacher_stats:
            note += "; " + self._teacher_note(ctx)
        elif self.teacher_mode == "frozen-after-warmup":
            note += "; " + self._warm_up_teacher(ctx)
        return note

    @torch.no_grad()
    def _teacher_note(self, ctx: FitContext) -> str:
        """How often the loaded teacher's reading of the training IHC agrees with the labels."""
        right = total = 0
        for batch, y in ctx.batches(batch_size=32):
            right += int(
                (self._teacher_logits(self._teacher_map(batch["teacher_image"])).argmax(1) == y).sum()
            )
            total += len(y)
        return f"loaded IHC teacher (frozen) agrees with {right}/{total} training labels"

    def _teacher_map(self, ihc: torch.Tensor) -> torch.Tensor:
        """The teacher's feature map of a batch of IHC inputs (normalised with this run's statistics)."""
        if not self.own_teacher_stats:  # renormalise to the loaded teacher's statistics
            rgb = _unnormalise(ihc, self.input_mean[1], self.input_std[1])
            ihc = (rgb - self.teacher_mean.view(1, -1, 1, 1)) / self.teacher_std.view(1, -1, 1, 1)
        return self.teacher.forward_features(ihc)

    def _teacher_logits(self, teacher_map: torch.Tensor) -> torch.Tensor:
        return self.teacher_classifier(self._teacher_vector(teacher_map))

    def _teacher_vector(self, teacher_map: torch.Tensor) -> torch.Tensor:
        """The teacher's pooled latent vector (timm's pre-logits: pooling, and a norm where it has one)."""
        return self.teacher.forward_head(teacher_map, pre_logits=True).float()

    def _warm_up_teacher(self, ctx: FitContext) -> str:
        params = [*self.teacher.parameters(), *self.teacher_classifier.parameters()]
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
        self.teacher.train()
        loss = torch.tensor(math.nan)
        for _ in range(self.teacher_warmup_epochs):
            for batch, y in ctx.batches(batch_size=8):
                if len(y) < 2:
                    continue  # BatchNorm needs two images
                logits = self._teacher_logits(self._teacher_map(batch["teacher_image"]))
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self._freeze_teacher()
        epochs = self.teacher_warmup_epochs
        last = float(loss.detach())
        return f"IHC teacher trained alone for {epochs} epochs (last loss {last:.3f}), then frozen"

    # --------------------------------------------------------------------------------------- losses
    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.loss_weights
        y = batch["label"]
        he, hallucinated = self.student.streams(batch["image"])
        knowledge = self.student.knowledge_features(batch["image"]) if self.student.knowledge else None
        teacher_map = self._teacher_map(batch["teacher_image"])
        h_vec, t_vec = _pool(hallucinated).float(), self._teacher_vector(teacher_map)
        hallucinated_logits = self.student.hallucinated_classifier(self.student.dropout(h_vec))
        # with a fitted knowledge head the fused classifier learns alone (mixed with it after training)
        fused_logits = self.student.fused_logits(
            he, hallucinated, None if self.student.mixes else knowledge
        ).float()
        teacher_logits = self.teacher_classifier(t_vec)
        terms = {
            "hallucinated_ce": loss_fn(hallucinated_logits, y),
            "fused_ce": loss_fn(fused_logits, y),
            "teacher_ce": loss_fn(teacher_logits, y),
        }
        if self.teacher_frozen and w["kd"]:
            t = self.kd_temperature
            target = F.softmax(teacher_logits.detach().float() / t, 1)
            terms["kd"] = (
                sum(
                    F.kl_div(F.log_softmax(s / t, 1), target, reduction="batchmean") * t * t
                    for s in (fused_logits, hallucinated_logits.float())
                )
                / 2
            )
        if knowledge is not None and w["knowledge_ce"] and not self.student.mixes:
            terms["knowledge_ce"] = loss_fn(self.student.knowledge_classifier(knowledge).float(), y)
        target = t_vec.detach()
        if self.align_loss == "cosine":
            terms["align"] = (1 - F.cosine_similarity(h_vec, target, dim=1)).mean()
        else:
            terms["align"] = F.mse_loss(h_vec, target)
        if w["nuclei"] or w["membrane"]:
            he_rgb = _unnormalise(batch["image"], self.input_mean[0], self.input_std[0])
            ihc_rgb = _unnormalise(batch["teacher_image"], self.input_mean[1], self.input_std[1])
            raw = self._standardised(auxiliary_targets(he_rgb, ihc_rgb, self.grid))
            size = (self.grid, self.grid)
            nuclei = F.interpolate(
                self.nuclei_head(he).float(), size=size, mode="bilinear", align_corners=False
            )
            terms["nuclei"] = F.mse_loss(nuclei[:, 0], raw["nuclei_map"])
            membrane = F.interpolate(
                self.membrane_map_head(hallucinated).float(), size=size, mode="bilinear", align_corners=False
            )
            membrane_mean = self.membrane_mean_head(h_vec)[:, 0]
            terms["membrane"] = 0.5 * (
                F.mse_loss(membrane[:, 0], raw["membrane_map"])
                + F.mse_loss(membrane_mean, raw["membrane_mean"])
            )
        if self.teacher_frozen:
            terms.pop("teacher_ce")
        loss = sum(w[k] * v for k, v in terms.items() if w[k])
        return loss, {k: float(v.detach()) for k, v in terms.items()}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A resumed run (``on_fit_start`` is not called again) gets its teacher frozen back."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if bool(self.teacher_frozen_flag):
            self._freeze_teacher()

    def _freeze_teacher(self) -> None:
        for p in [*self.teacher.parameters(), *self.teacher_classifier.parameters()]:
            p.requires_grad_(False)
        self.teacher_frozen_flag.fill_(1)
        self.teacher.eval()

    @property
    def teacher_frozen(self) -> bool:
        return bool(self.teacher_frozen_flag)


def _unnormalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A normalised model input back to RGB in [0, 1]."""
    return (x.float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)


def load_teacher(path: str | Path, num_classes: int) -> tuple[Any, dict[str, Any]]:
    """A saved IHC classifier of the ``lowres`` family as a frozen teacher: ``(timm network, stats)``."""
    from her2score.models.saved import load_lowres_classifier

    model, meta = load_lowres_classifier(path, num_classes, "teacher")
    network = getattr(model, "backbone", None)
    if network is None or not hasattr(network, "forward_head") or not hasattr(network, "get_classifier"):
        raise ConfigError(
            f"teacher {path}: a {meta['model']} is not an image classifier of the lowres family"
        )
    return network, meta["stats"]
