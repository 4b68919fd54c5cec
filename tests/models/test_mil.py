"""Every multiple-instance aggregator learns a separable bag task through the one engine (``train_run``),
and explains a bag with one attention value per tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from her2score.data.manifest import load_manifest
from her2score.engine.config import load_config
from her2score.engine.train import train_run
from her2score.models.registry import create_model, get_model_spec

SCORES = ("0", "1+", "3+")  # her2-3way: 0 / low / high
AGGREGATORS = ("mean-mil", "clam-sb", "transmil", "dsmil")


def bag_cohort(folder: Path, n: int = 24, dim: int = 8, seed: int = 0) -> Path:
    """Bags of noise tiles; a few tiles of each bag carry their class's direction in feature space."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide,her2,patient"]
    for i in range(n):
        label = i % 3
        tiles = int(rng.integers(12, 30))
        feats = rng.normal(0, 1, (tiles, dim)).astype(np.float32)
        feats[rng.choice(tiles, 6, replace=False), label] += 4.0
        coords = rng.integers(0, 10_000, (tiles, 2)).astype(np.float32)
        save_file(
            {"features": torch.from_numpy(feats), "coords": torch.from_numpy(coords)},
            str(folder / f"b{i}.safetensors"),
        )
        lines.append(f"b{i}.safetensors,{SCORES[label]},P{i}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bag_cohort(tmp_path_factory.mktemp("bags"))


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregator_learns_a_separable_bag_task_through_the_engine(
    name: str, bags: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cfg = load_config(
        None, model=name, model_args={"in_dim": 8, "hidden": 16, "dropout": 0.0}, epochs=12, batch_size=4,
        lr=1e-2, n_boot=10, device="cpu", test_fraction=0.25, val_fraction=0.2, patience=0, select="last",
    )  # fmt: skip
    result = train_run(load_manifest(bags), cfg, tmp_path / "run", quiet=True, log=lambda s: None)
    assert result.metrics["accuracy"] >= 0.8, result.metrics  # 6 held-out bags; chance is 1/3


@pytest.mark.parametrize("name", ["abmil", *AGGREGATORS])
def test_aggregator_explains_with_one_value_per_tile(name: str) -> None:
    spec = get_model_spec(name)
    assert (spec.input_kind, spec.maps) == ("bag", ("attention",))
    model = create_model(name, 3, in_dim=8, hidden=16).eval()
    features = torch.randn(2, 11, 8)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    batch = {"features": features, "mask": mask, "coords": torch.zeros(2, 11, 2)}
    probs = model.predict_step(batch)
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    # padding does not change a bag's prediction
    alone = model.predict_step({"features": features[1:, :7], "mask": mask[1:, :7]})
    assert torch.allclose(alone, probs[1:], atol=1e-5)
    heat, target = model.explain(batch)
    assert heat.shape == (11,)
    assert 0 <= target < 3
    assert heat.min() >= 0
    assert heat.max() == pytest.approx(1.0)


def test_clam_instance_loss_is_added_to_the_slide_loss() -> None:
    model = create_model("clam-sb", 3, in_dim=8, hidden=16, dropout=0.0, k_sample=3)
    batch = {"features": torch.randn(2, 10, 8), "mask": torch.ones(2, 10, dtype=torch.bool)}
    batch["label"] = torch.tensor([0, 2])
    loss, logs = model.training_step(batch, torch.nn.functional.cross_entropy)
    assert logs["instance_loss"] > 0
    bag = torch.nn.functional.cross_entropy(model.logits(batch), batch["label"])
    assert loss.item() == pytest.approx(0.7 * bag.item() + 0.3 * logs["instance_loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------ patch classifier
def tile_cohort(folder: Path, n: int = 24, dim: int = 8, seed: int = 1) -> Path:
    """Bags whose tiles mostly carry their slide's class direction (a separable tile task), some noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide,her2,patient"]
    for i in range(n):
        label = i % 3
        tiles = int(rng.integers(8, 20))
        feats = rng.normal(0, 1, (tiles, dim)).astype(np.float32)
        feats[rng.random(tiles) < 0.7, label] += 3.0
        save_file(
            {"features": torch.from_numpy(feats), "coords": torch.zeros(tiles, 2)},
            str(folder / f"t{i}.safetensors"),
        )
        lines.append(f"t{i}.safetensors,{SCORES[label]},P{i}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


@pytest.mark.parametrize("fusion", ["mean", "majority", "top-percentile"])
def test_patch_classifier_learns_a_separable_tile_task_through_the_engine(
    fusion: str, tmp_path: Path
) -> None:
    manifest = tile_cohort(tmp_path / "tiles")
    cfg = load_config(
        None, model="patch-classifier", epochs=10, batch_size=4, lr=1e-2, n_boot=10, device="cpu",
        model_args={"in_dim": 8, "hidden": 16, "dropout": 0.0, "fusion": fusion, "top_percent": 25.0},
        test_fraction=0.25, val_fraction=0.2, patience=0, select="last",
    )  # fmt: skip
    logs: list[str] = []
    result = train_run(load_manifest(manifest), cfg, tmp_path / "run", quiet=True, log=logs.append)
    assert result.metrics["accuracy"] >= 0.8, result.metrics  # 6 held-out bags; chance is 1/3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["train_tile_accuracy"].iloc[-1] > 0.6  # tiles learn their slide's class


def test_patch_classifier_fusion_rules_on_known_tile_probabilities() -> None:
    from her2score.models.nets.patch_classifier import TileClassifier

    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])  # the last tile is padding
    mean = TileClassifier(3, 4, fusion="mean").fuse(probs, mask)
    assert torch.allclose(mean, torch.tensor([[1.3, 0.7, 1.0]]) / 3)
    vote = TileClassifier(3, 4, fusion="majority").fuse(probs, mask)
    assert torch.allclose(vote, torch.tensor([[2 / 3, 0.0, 1 / 3]]))
    # top 34 % of 3 real tiles = 2 tiles per class: (0.6+0.6)/2, (0.3+0.3)/2, (0.8+0.1)/2, renormalised
    top = TileClassifier(3, 4, fusion="top-percentile", top_percent=34).fuse(probs, mask)
    expected = torch.tensor([[0.6, 0.3, 0.45]])
    assert torch.allclose(top, expected / expected.sum())
    with pytest.raises(ValueError, match="fusion"):
        TileClassifier(3, 4, fusion="max")


def test_patch_classifier_predicts_fused_probabilities_and_maps_tile_probabilities() -> None:
    model = create_model("patch-classifier", 3, in_dim=8, hidden=16, fusion="mean").eval()
    features = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    probs = model.predict_step({"features": features, "mask": mask})
    tiles = model.tile_probabilities(features)
    assert torch.allclose(probs[0], tiles[0].mean(0), atol=1e-5)
    assert torch.allclose(probs[1], tiles[1, :5].mean(0), atol=1e-5)  # padding ignored
    heat, target = model.explain({"features": features, "mask": mask})
    assert heat.shape == (9,)
    assert 0 <= target < 3
    assert np.allclose(heat, tiles[0, :, target].detach().numpy(), atol=1e-6)
