"""One engine for every model kind: a bag-of-features model and a two-input (H&E + IHC) model train,
save, reload and predict through ``train_run`` / ``Predictor`` / ``predict_slides``, with no copy of
the loop. The two-input model learns from IHC and predicts from H&E alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from her2score.data.manifest import load_manifest
from her2score.engine.checkpoint import load_model, read_metadata
from her2score.engine.config import load_config
from her2score.engine.evaluate import evaluate_model
from her2score.engine.predict import predict_slides
from her2score.engine.train import train_run
from her2score.errors import ConfigError
from her2score.models import registry
from her2score.models.base import SlideModel

SCORES = ("0", "1+", "3+")  # her2-3way: 0 / low / high


# --------------------------------------------------------------------------------------- bag model
def _bag_cohort(folder: Path, n: int = 24, dim: int = 16, seed: int = 0) -> Path:
    """Bags of noise tiles; a few tiles of each bag carry their class's direction in feature space."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide,her2,patient"]
    for i in range(n):
        label = i % 3
        tiles = int(rng.integers(20, 60))
        feats = rng.normal(0, 1, (tiles, dim)).astype(np.float32)
        key = rng.choice(tiles, 4, replace=False)
        feats[key, label] += 4.0
        coords = rng.integers(0, 10_000, (tiles, 2)).astype(np.float32)
        save_file(
            {"features": torch.from_numpy(feats), "coords": torch.from_numpy(coords)},
            str(folder / f"b{i}.safetensors"),
        )
        lines.append(f"b{i}.safetensors,{SCORES[label]},P{i}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.mark.slow
def test_bag_model_trains_saves_reloads_and_predicts_through_the_engine(tmp_path: Path) -> None:
    manifest = _bag_cohort(tmp_path / "bags")
    cfg = load_config(
        None, model="abmil", model_args={"hidden": 16, "dropout": 0.0}, epochs=40, batch_size=4,
        lr=1e-2, n_boot=20, device="cpu", test_fraction=0.25, val_fraction=0.2, patience=0, select="last",
    )  # fmt: skip
    result = train_run(load_manifest(manifest), cfg, tmp_path / "run", quiet=True, log=lambda s: None)
    meta = read_metadata(result.model_paths[0])
    assert (meta["model"], meta["input_kind"]) == ("abmil", "bag")
    assert meta["model_kwargs"] == {"in_dim": 16, "hidden": 16, "dropout": 0.0}  # in_dim from the bags
    assert result.metrics["accuracy"] >= 0.8  # 6 held-out bags; chance is 1/3
    # reload and predict from the checkpoint alone: the same probabilities as at the end of training
    held_out = pd.read_csv(tmp_path / "run" / "predictions.csv")
    frame, failures = predict_slides(
        result.model_paths[0], list(held_out["slide"]), tmp_path / "p.csv", quiet=True
    )
    assert not failures
    cols = [c for c in frame.columns if c.startswith("prob_")]
    assert np.allclose(frame[cols].to_numpy(), held_out[cols].to_numpy(), atol=1e-5)
    assert set(frame["status"]) == {"ok"}
    metrics, _ = evaluate_model(result.model_paths[0], manifest, tmp_path / "eval", quiet=True, n_boot=10)
    assert metrics["n"] == 24


def test_a_model_option_it_does_not_take_is_a_clear_error(tmp_path: Path) -> None:
    manifest = _bag_cohort(tmp_path / "bags", n=6)
    cfg = load_config(None, model="abmil", model_args={"in_dim": 16, "depth": 3}, device="cpu")
    with pytest.raises(ConfigError, match=r"model abmil has no option 'depth'.*in_dim"):
        train_run(load_manifest(manifest), cfg, tmp_path / "run", quiet=True, log=lambda s: None)
    cfg = load_config(None, model="abmil", backbone="resnet18", device="cpu")
    with pytest.raises(ConfigError, match=r"model abmil has no option 'backbone'"):
        train_run(load_manifest(manifest), cfg, tmp_path / "run2", quiet=True, log=lambda s: None)


# --------------------------------------------------------------------------------- two-input model
class TinyEncoder(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyStudent(SlideModel):
    """The H&E path: what is saved and predicts."""

    def __init__(self, num_classes: int, dim: int = 8) -> None:
        super().__init__()
        self.encoder = TinyEncoder(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


class ToyDistilled(SlideModel):
    """An IHC teacher trained beside an H&E student whose features are pulled towards the teacher's."""

    def __init__(self, num_classes: int, dim: int = 8, align: float = 1.0) -> None:
        super().__init__()
        self.student = registry.create_model("toy-student", num_classes, dim=dim)
        self.teacher = TinyEncoder(dim)
        self.teacher_head = nn.Linear(dim, num_classes)
        self.align = align

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def training_step(self, batch: dict[str, Any], loss_fn: Any) -> tuple[torch.Tensor, dict[str, float]]:
        he = self.student.encoder(batch["image"])
        ihc = self.teacher(batch["teacher_image"])
        cls = loss_fn(self.student.classifier(he), batch["label"])
        teacher = loss_fn(self.teacher_head(ihc), batch["label"])
        align = nn.functional.mse_loss(he, ihc.detach())
        return cls + teacher + self.align * align, {"align": float(align.detach())}

    def inference_module(self) -> SlideModel:
        return self.student


@pytest.fixture
def toy_pair_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered by a test, as a third-party package would: no engine file changes."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    data = {"mpp": 1.0, "input_size": 32}
    registry.register_model("toy-student", input_kind="lowres", data=data)(
        lambda num_classes, dim=8: ToyStudent(num_classes, dim)
    )
    registry.register_model("toy-distilled", input_kind="pair", data=data)(
        lambda num_classes, dim=8, align=1.0: ToyDistilled(num_classes, dim, align)
    )


def _pair_cohort(folder: Path, n: int = 12) -> Path:
    from her2score.data.synth import render_pair

    (folder / "HE").mkdir(parents=True)
    (folder / "IHC").mkdir()
    lines = ["slide,he,her2,patient,mpp"]
    for i in range(n):
        score = SCORES[i % 3]
        he, ihc, _ = render_pair(score, size=(256, 256), seed=i)
        Image.fromarray(he).save(folder / "HE" / f"{i}.png")
        Image.fromarray(ihc).save(folder / "IHC" / f"{i}.png")
        lines.append(f"IHC/{i}.png,HE/{i}.png,{score},P{i},0.5")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.mark.slow
@pytest.mark.usefixtures("toy_pair_models")
def test_two_input_model_learns_from_ihc_and_predicts_from_he_alone(tmp_path: Path) -> None:
    manifest = _pair_cohort(tmp_path / "pairs")
    cfg = load_config(
        None, model="toy-distilled", model_args={"dim": 8, "align": 0.5}, epochs=2, batch_size=4, n_boot=10,
        device="cpu", cache_dir=str(tmp_path / "cache"), mpp=1.0, input_size=32,
    )  # fmt: skip
    logs: list[str] = []
    result = train_run(
        load_manifest(manifest), cfg, tmp_path / "run", quiet=True, log=logs.append, heatmaps=0
    )
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert "train_align" in history.columns  # the model's own logs reach the history
    path = result.model_paths[0]
    saved = load_file(str(path))
    assert saved
    assert all(k.startswith(("encoder.", "classifier.")) for k in saved)  # no teacher inside
    meta = read_metadata(path)
    assert (meta["model"], meta["trained_as"], meta["input_kind"], meta["input_stain"]) == (
        "toy-student", "toy-distilled", "lowres", "he",
    )  # fmt: skip
    assert "teacher" not in meta["stats"]
    model, _ = load_model(path)
    assert isinstance(model, ToyStudent)
    he_only = sorted((tmp_path / "pairs" / "HE").glob("*.png"))[:4]
    frame, failures = predict_slides(path, he_only, tmp_path / "he.csv", mpp=0.5, quiet=True)
    assert not failures
    assert len(frame) == 4
    assert set(frame["status"]) == {"ok"}  # H&E is what this model reads
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    json.loads((tmp_path / "run" / "metrics.json").read_text())
