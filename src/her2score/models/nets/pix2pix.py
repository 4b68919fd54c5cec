"""Virtual staining then scoring: a pix2pix-style generator turns H&E into IHC, an IHC classifier scores it.

The baseline LGD-Net is measured against (Isola et al., 2017; BCI's Pyramid pix2pix is its multi-scale
relative). Our choices, small enough to train on a CPU:

* **Generator**: a U-Net (``depth`` stride-2 convolutions from ``base_channels`` channels, doubling up
  to 8x, BatchNorm and LeakyReLU down, transposed convolutions and skip connections up) from the
  normalised H&E image to IHC RGB in [0, 1] (a sigmoid, where pix2pix has tanh on [-1, 1]).
* **Discriminator**: a PatchGAN (three stride-2 convolutions and a 1-channel map, InstanceNorm without
  parameters or buffers) on the H&E image concatenated with a real or a generated IHC image.
* **Losses**: ``l1_weight`` x L1 to the paired IHC (pix2pix's 100) + ``adversarial_weight`` x the
  generator's non-saturating GAN loss, and the discriminator's loss on real and generated pairs.
* **One optimiser** (the engine's): the generator's adversarial term is computed through the
  discriminator with its parameters detached (``torch.func.functional_call``) and the discriminator's
  own term on a detached generated image, so one backward pass gives each network only its own
  gradients, and one optimiser step updates both (simultaneous gradient descent, where pix2pix
  alternates; no second optimiser and no change to the training loop).
* **Scorer**: an IHC classifier. With ``scorer`` (a trained her2score checkpoint on IHC, e.g. the
  benchmark's ``ihc-only`` run) it is loaded and frozen, so the baseline is exactly "virtual stain, then
  the IHC classifier"; without it a ``lowres-resnet`` is trained on the real IHC images beside the
  generator. Either way it reads generated images normalised as it was trained.

At inference only :class:`VirtualStainHE` is saved: generator and scorer, from H&E alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from her2score.errors import ConfigError
from her2score.models.base import FitContext, SlideModel


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UNetGenerator(nn.Module):
    """H&E (normalised, (B, 3, H, W), H and W multiples of 2**depth) -> IHC RGB in [0, 1]."""

    def __init__(self, base_channels: int = 16, depth: int = 5) -> None:
        super().__init__()
        if not 2 <= depth <= 8:
            raise ConfigError(f"generator depth must be 2-8 levels, not {depth}")
        widths = [base_channels * min(2**i, 8) for i in range(depth)]
        self.down = nn.ModuleList(
            [_down(3 if i == 0 else widths[i - 1], w, norm=i > 0) for i, w in enumerate(widths)]
        )
        # level i of the decoder receives level i+1's output (and, but for the deepest, its skip)
        self.up = nn.ModuleList(
            [_up(widths[i + 1] * (1 if i == depth - 2 else 2), widths[i]) for i in range(depth - 1)]
        )
        self.out = nn.ConvTranspose2d(2 * widths[0], 3, 4, 2, 1)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = skips.pop()
        for layer in reversed(self.up):
            x = torch.cat([layer(x), skips.pop()], 1)
        return torch.sigmoid(self.out(x))[..., :h, :w]


class PatchDiscriminator(nn.Module):
    """(H&E, IHC) pair -> a map of real/fake logits, one per overlapping patch (no running buffers)."""

    def __init__(self, base_channels: int = 16) -> None:
        super().__init__()
        b = base_channels
        self.net = nn.Sequential(
            nn.Conv2d(6, b, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(b, 2 * b, 4, 2, 1),
            nn.InstanceNorm2d(2 * b),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * b, 4 * b, 4, 2, 1),
            nn.InstanceNorm2d(4 * b),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * b, 1, 3, 1, 1),
        )

    def forward(self, he: torch.Tensor, ihc: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([he, ihc], 1))


class VirtualStainHE(SlideModel):
    """What predicts: H&E -> generated IHC -> the IHC classifier."""

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 16,
        depth: int = 5,
        scorer_model: str = "lowres-resnet",
        scorer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from her2score.models.registry import create_model

        self.generator = UNetGenerator(base_channels, depth)
        self.scorer = create_model(scorer_model, num_classes, **(scorer_kwargs or {}))
        self.scorer_model, self.scorer_kwargs = scorer_model, dict(scorer_kwargs or {})
        self.base_channels, self.depth = base_channels, depth
        self.backbone_name = getattr(self.scorer, "backbone_name", None)
        # the normalisation the scorer was trained with (set by VirtualStain before training)
        self.register_buffer("scorer_mean", torch.zeros(3))
        self.register_buffer("scorer_std", torch.ones(3))

    def build_kwargs(self) -> dict[str, Any]:
        return {
            "base_channels": self.base_channels,
            "depth": self.depth,
            "scorer_model": self.scorer_model,
            "scorer_kwargs": self.scorer_kwargs,
        }

    def stain(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised H&E -> virtual IHC RGB in [0, 1]."""
        return self.generator(x)

    def score(self, ihc_rgb: torch.Tensor) -> torch.Tensor:
        """IHC RGB in [0, 1] -> the scorer's logits."""
        return self.scorer((ihc_rgb - self.scorer_mean.view(1, -1, 1, 1)) / self.scorer_std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.stain(x))


class VirtualStain(SlideModel):
    """The virtual-staining baseline in training: generator, discriminator and scorer (see the module)."""

    def __init__(
        self,
        num_classes: int,
        scorer: str | Path | None = None,
        l1_weight: float = 100.0,
        adversarial_weight: float = 1.0,
        base_channels: int = 16,
        depth: int = 5,
    ) -> None:
        super().__init__()
        if min(l1_weight, adversarial_weight) < 0:
            raise ConfigError("l1_weight and adversarial_weight must be >= 0")
        scorer_model, scorer_kwargs, scorer_stats, state = "lowres-resnet", {}, None, None
        if scorer:
            from her2score.models.saved import load_lowres_classifier

            loaded, meta = load_lowres_classifier(scorer, num_classes, "scorer")
            scorer_model, scorer_kwargs, scorer_stats = meta["model"], meta["model_kwargs"], meta["stats"]
            state = loaded.state_dict()
        from her2score.models.registry import create_model

        self.student = create_model(  # through the registry: the saved module is rebuilt by its name
            "virtual-stain-he", num_classes, base_channels=base_channels, depth=depth,
            scorer_model=scorer_model, scorer_kwargs=scorer_kwargs,
        )  # fmt: skip
        self.backbone_name = self.student.backbone_name
        self.discriminator = PatchDiscriminator(base_channels)
        self.scorer_frozen = state is not None
        if state is not None:
            self.student.scorer.load_state_dict(state)
            self.student.scorer.requires_grad_(False)
            self.student.scorer_mean.copy_(torch.as_tensor(scorer_stats["mean"], dtype=torch.float32))
            self.student.scorer_std.copy_(torch.as_tensor(scorer_stats["std"], dtype=torch.float32))
        self.weights_note = f"scorer: {scorer}" if scorer else "scorer trained beside the generator"
        self.l1_weight, self.adversarial_weight = l1_weight, adversarial_weight
        self.register_buffer("ihc_mean", torch.zeros(3))
        self.register_buffer("ihc_std", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def inference_module(self) -> SlideModel:
        return self.student

    def train(self, mode: bool = True) -> VirtualStain:
        super().train(mode)
        if self.scorer_frozen:
            self.student.scorer.eval()  # a loaded scorer keeps its BatchNorm statistics
        return self

    def on_fit_start(self, ctx: FitContext) -> str | None:
        """Keep the IHC normalisation (to recover RGB targets); a jointly trained scorer uses it too."""
        self.ihc_mean.copy_(torch.as_tensor(ctx.stats["teacher"]["mean"], dtype=torch.float32))
        self.ihc_std.copy_(torch.as_tensor(ctx.stats["teacher"]["std"], dtype=torch.float32))
        if not self.scorer_frozen:
            self.student.scorer_mean.copy_(self.ihc_mean)
            self.student.scorer_std.copy_(self.ihc_std)
            return "virtual-stain: the IHC scorer is trained on the real IHC images beside the generator"
        return "virtual-stain: the IHC scorer is loaded and frozen"

    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        he = batch["image"]
        real = (batch["teacher_image"].float() * self.ihc_std.view(1, -1, 1, 1)) + self.ihc_mean.view(
            1, -1, 1, 1
        )
        real = real.clamp(0, 1)
        fake = self.student.stain(he).float()
        ones = torch.ones((), device=he.device)
        d_real = self.discriminator(he, real)
        d_fake = self.discriminator(he, fake.detach())
        terms = {
            "discriminator": 0.5
            * (
                F.binary_cross_entropy_with_logits(d_real, ones.expand_as(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            ),
        }
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        d_on_fake = functional_call(self.discriminator, frozen, (he, fake))
        terms["adversarial"] = F.binary_cross_entropy_with_logits(d_on_fake, ones.expand_as(d_on_fake))
        terms["l1"] = F.l1_loss(fake, real)
        loss = (
            terms["discriminator"]
            + self.adversarial_weight * terms["adversarial"]
            + self.l1_weight * terms["l1"]
        )
        if not self.scorer_frozen:
            terms["scorer_ce"] = loss_fn(self.student.score(real).float(), batch["label"])
            loss = loss + terms["scorer_ce"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}


def psnr_ssim(generated: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two uint8 RGB images (H, W, 3), as BCI papers report them."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = float(peak_signal_noise_ratio(real, generated, data_range=255))
    ssim = float(structural_similarity(real, generated, channel_axis=2, data_range=255))
    return psnr, ssim
