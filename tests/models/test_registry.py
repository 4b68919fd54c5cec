"""The model registry: entries say their input and tasks; models are built by name; local weights only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from her2score.errors import CheckpointError, ConfigError
from her2score.models.registry import create_model, get_model_spec, list_models, register_model


def test_registry_lists_specs_with_input_kind_and_tasks() -> None:
    names = [m.name for m in list_models()]
    assert "lowres-convnext" in names
    assert names == sorted(names)
    spec = get_model_spec("lowres-convnext")
    assert spec.input_kind == "lowres"
    assert "her2-3way" in spec.tasks
    assert spec.description
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*lowres-convnext"):
        get_model_spec("nope")


def test_register_a_new_model_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from her2score.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry as it was

    @register_model("test-bag-mean", tasks=("her2-3way",), input_kind="bag", description="mean of a bag")
    def bag_mean(num_classes: int, dim: int = 8) -> torch.nn.Module:
        return torch.nn.Linear(dim, num_classes)

    model = create_model("test-bag-mean", 3, dim=5)
    assert model(torch.zeros(2, 5)).shape == (2, 3)
    assert model.registry_name == "test-bag-mean"
    assert model.init_kwargs == {"dim": 5}
    assert get_model_spec("test-bag-mean").input_kind == "bag"
    with pytest.raises(ConfigError, match=r"no option 'depth' \(its options: dim\)"):
        create_model("test-bag-mean", 3, depth=2)


def test_lowres_convnext_forward_features_and_scratch_note() -> None:
    model = create_model("lowres-convnext", 4, backbone="convnext_atto")
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 4)
    assert model.features(x).ndim == 4  # last conv stage, for Grad-CAM
    assert model.weights_note == "training from scratch"
    with pytest.raises(ConfigError, match="not a file"):
        create_model("lowres-convnext", 3, backbone="weights.safetensors")


def test_convnext_norm_batch_from_scratch_layer_with_weights() -> None:
    def norms(model: torch.nn.Module) -> set[str]:
        kinds = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)  # timm's LayerNorm2d is a LayerNorm
        return {type(m).__name__ for m in model.modules() if isinstance(m, kinds)}

    scratch = create_model("lowres-convnext", 3, backbone="convnext_atto")
    assert scratch.norm == "batch"
    assert norms(scratch) == {"BatchNorm2d"}
    layer = create_model("lowres-convnext", 3, backbone="convnext_atto", norm="layer")
    assert norms(layer)
    assert "BatchNorm2d" not in norms(layer)
    assert create_model("lowres-resnet", 3).norm is None  # ResNet keeps its own BatchNorm
    with pytest.raises(ConfigError, match="norm must be one of"):
        create_model("lowres-convnext", 3, backbone="convnext_atto", norm="group")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_local_weights_load_and_bad_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = create_model("lowres-convnext", 1000, backbone="convnext_atto", norm="layer")  # "ImageNet"
    path = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    model = create_model("lowres-convnext", 3, backbone="convnext_atto", weights=path)
    assert model.norm == "layer"  # pretrained weights keep the normalisation they were trained with
    assert torch.equal(model.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert "2 left at initialisation" in model.weights_note  # the classifier head (weight, bias)
    pth = tmp_path / "atto.pth"
    torch.save({"state_dict": source.backbone.state_dict()}, pth)
    assert (
        "tensors loaded"
        in create_model("lowres-convnext", 3, backbone="convnext_atto", weights=pth).weights_note
    )
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        create_model("lowres-convnext", 3, backbone="convnext_atto", weights=junk)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="no tensor matches"):
        create_model("lowres-convnext", 3, backbone="convnext_atto", weights=other)
