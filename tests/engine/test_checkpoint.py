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
    "input_kind": "lowres", "data": {"input_size": 32, "mpp": 8.0, "margin": 0.02},
    "stats": {"mean": [0.5] * 3, "std": [0.25] * 3},
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
    assert meta["data"]["mpp"] == 8.0
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


def _write_raw(path: Path, model: torch.nn.Module, meta: dict) -> Path:
    """A checkpoint written by hand (as an older her2score would), bypassing ``save_model``'s checks."""
    import json

    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "her2score-model", "her2score": json.dumps(meta)})
    return path


def test_format_1_checkpoint_without_norm_is_read_as_layernorm(tmp_path: Path) -> None:
    """Format-1 checkpoints (before the norm choice) hold LayerNorm ConvNeXts and flat data keys."""
    torch.manual_seed(0)
    model = create_model("lowres-convnext", 3, backbone="convnext_atto", norm="layer").eval()
    old = {
        "task": "her2-3way", "classes": ["0", "low", "high"], "model": "lowres-convnext",
        "model_kwargs": {"backbone": "convnext_atto"}, "input_kind": "lowres", "input_size": 32, "mpp": 8.0,
        "mean": [0.5] * 3, "std": [0.25] * 3, "format_version": 1,
    }  # fmt: skip
    loaded, meta = load_model(_write_raw(tmp_path / "old.safetensors", model, old))
    assert meta["data"] == {"input_size": 32, "mpp": 8.0}
    assert meta["stats"]["mean"] == [0.5] * 3
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_non_finite_weights_are_refused_at_save_and_load(tmp_path: Path) -> None:
    model = create_model("lowres-convnext", 3, backbone="convnext_atto")
    with torch.no_grad():
        model.backbone.head.fc.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model(tmp_path / "nan.safetensors", model, META)
    assert not (tmp_path / "nan.safetensors").exists()
    path = _write_raw(tmp_path / "nan2.safetensors", model, {**META, "format_version": 2})
    with pytest.raises(CheckpointError, match=r"nan2\.safetensors.*non-finite"):
        load_model(path)
