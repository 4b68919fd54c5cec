"""Checkpoints rebuild the model from their metadata alone; corrupted and foreign files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from her2score.engine.checkpoint import load_model, load_state, read_metadata, save_model
from her2score.errors import CheckpointError
from her2score.models.registry import create_model

META = {
    "task": "her2-3way", "classes": ["0", "low", "high"], "model": "lowres-convnext",
    "model_kwargs": {"backbone": "convnext_atto", "norm": "batch"}, "backbone": "convnext_atto",
    "input_kind": "lowres",
    "input_size": 32, "mpp": 8.0, "mean": [0.5] * 3, "std": [0.25] * 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("lowres-convnext", 3, backbone="convnext_atto").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    path = save_model(tmp_path_factory.mktemp("ck") / "model.safetensors", model, META)
    return path, x, expected


def test_model_rebuilt_from_metadata_alone(saved: tuple[Path, torch.Tensor, torch.Tensor]) -> None:
    path, x, expected = saved
    model, meta = load_model(path)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert meta["classes"] == ["0", "low", "high"]
    assert meta["mpp"] == 8.0
    assert "her2score_version" in meta


def test_corrupted_truncated_and_foreign_files_are_refused(saved: tuple, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = saved[0]
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_metadata(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a her2score model"):
        load_model(foreign)
    pickled = tmp_path / "state.pt"
    torch.save({"epoch": 1, "obj": Path("x")}, pickled)  # a non-tensor object: weights_only refuses it
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state(pickled)


def test_checkpoint_without_norm_is_read_as_layernorm(tmp_path: Path) -> None:
    """Checkpoints written before the norm choice hold LayerNorm ConvNeXts; they still load."""
    torch.manual_seed(0)
    model = create_model("lowres-convnext", 3, backbone="convnext_atto", norm="layer").eval()
    meta = {**META, "model_kwargs": {"backbone": "convnext_atto"}}
    path = save_model(tmp_path / "old.safetensors", model, meta)
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
