"""The virtual-staining baseline: pix2pix generator and PatchGAN through the one engine, its single
optimiser giving each network only its own gradients, and the BCI benchmark row it produces."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from her2score.data.synth import make_cohort
from her2score.models.nets.pix2pix import UNetGenerator, VirtualStain, VirtualStainHE, psnr_ssim
from her2score.models.registry import create_model, get_model_spec


def test_the_generator_keeps_the_size_and_gives_rgb() -> None:
    generator = UNetGenerator(base_channels=4, depth=3).eval()
    with torch.no_grad():
        out = generator(torch.randn(2, 3, 44, 52))  # not multiples of 8: padded, then cropped back
    assert out.shape == (2, 3, 44, 52)
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1


def test_one_backward_gives_the_discriminator_only_its_own_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("virtual-stain", 4, base_channels=4, depth=3)
    assert isinstance(model, VirtualStain)
    assert isinstance(model.inference_module(), VirtualStainHE)
    assert get_model_spec("virtual-stain").input_kind == "pair"
    assert model.inference_module().registry_name == "virtual-stain-he"  # what a checkpoint is rebuilt as
    only_d = copy.deepcopy(model)
    only_d.l1_weight = only_d.adversarial_weight = 0.0
    batch = {"image": torch.randn(2, 3, 32, 32), "teacher_image": torch.randn(2, 3, 32, 32)}
    batch["label"] = torch.tensor([0, 3])
    grads = []
    for m in (model, only_d):
        m.train()
        loss, logs = m.training_step(batch, torch.nn.functional.cross_entropy)
        loss.backward()
        grads.append([p.grad.clone() for p in m.discriminator.parameters()])
    assert set(logs) == {"discriminator", "adversarial", "l1", "scorer_ce"}
    for full, own in zip(*grads, strict=True):
        assert torch.allclose(full, own, atol=1e-6)  # the generator's adversarial term left D alone
    assert model.student.generator.out.weight.grad.abs().sum() > 0  # ... and reached the generator


def test_psnr_and_ssim_reward_the_closer_image() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    close = np.clip(real.astype(int) + rng.integers(-5, 6, real.shape), 0, 255).astype(np.uint8)
    far = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    (psnr_close, ssim_close), (psnr_far, ssim_far) = psnr_ssim(close, real), psnr_ssim(far, real)
    assert psnr_close > psnr_far + 10
    assert ssim_close > ssim_far


@pytest.mark.slow
def test_the_benchmark_scores_virtual_stain_with_the_ihc_classifier(tmp_path: Path) -> None:
    from her2score.cli.benchmark import run_bci_benchmark
    from her2score.engine.checkpoint import read_metadata

    root = tmp_path / "bci"
    make_cohort(root, n=16, kind="pairs", patch_size=256, patches_per_patient=2, workers=1, seed=3)
    logs: list[str] = []
    frame = run_bci_benchmark(
        root, tmp_path / "out", size=64, epochs=1, models=["virtual-stain", "ihc-only"], batch_size=4,
        n_boot=10, log=logs.append,
    )  # fmt: skip
    assert list(frame["model"]) == ["ihc-only", "virtual-stain"]  # the scorer is trained first
    row = frame.set_index("model").loc["virtual-stain"]
    assert 5 < row["psnr"] < 60
    assert -1 <= row["ssim"] <= 1
    assert row["gflops_per_patch"] > frame.set_index("model").loc["ihc-only", "gflops_per_patch"]
    assert any("loaded and frozen" in line for line in logs)
    meta = read_metadata(tmp_path / "out" / "runs" / "virtual-stain" / "model.safetensors")
    assert (meta["model"], meta["input_stain"]) == ("virtual-stain-he", "he")
    assert (tmp_path / "out" / "virtual_stain" / "examples.png").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "virtual_stain/examples.png" in report
    assert "PSNR" in report
    assert pd.read_csv(tmp_path / "out" / "results.csv")["psnr"].notna().sum() == 1
