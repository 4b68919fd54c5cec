"""ONNX export of a her2score model's inference module, and an ONNX Runtime backend for ``predict``.

The exported graph takes the batch of normalised images the input kind builds (``image``, float32,
dynamic batch size) and returns class probabilities; the checkpoint's metadata (task, classes, input
kind, data configuration, normalisation) travels in the ONNX file's metadata, so ``predict --backend
onnxruntime`` needs no other file. Export goes through ``torch.export`` (the dynamo exporter): the
stain head's quantiles have no TorchScript-exporter equivalent. Every export is checked against torch
on random inputs before it is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from her2score.errors import CheckpointError, ConfigError

META_KEY = "her2score"
#: Largest difference in probability between ONNX Runtime and torch an export may show.
TOLERANCE = 1e-4


def _probabilities_module(model: Any, key: str) -> Any:
    import torch

    class Probabilities(torch.nn.Module):
        """``image`` -> class probabilities of the model's prediction step."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model.predict_step({key: image})

    return Probabilities().eval()


def export_onnx(model_path: str | Path, out_path: str | Path, opset: int = 18) -> dict[str, Any]:
    """Write ``out_path`` (ONNX) for the model saved at ``model_path``; returns what was checked.

    Raises:
        ConfigError: the model cannot be exported (its registry entry says so, or it does not read images).
    """
    import torch

    from her2score.engine.checkpoint import load_model
    from her2score.io import atomic_path
    from her2score.models.registry import get_model_spec

    model, meta = load_model(model_path, "cpu")
    if not get_model_spec(meta["model"]).exportable:
        raise ConfigError(f"model {meta['model']} cannot be exported to ONNX (its registry entry says so)")
    size = meta["data"].get("input_size")
    if meta["input_kind"] != "lowres" or not size:
        raise ConfigError(
            f"ONNX export takes image models; {meta['model']} reads {meta['input_kind']} inputs"
        )
    wrapped = _probabilities_module(model, "image")
    example = torch.rand(2, 3, size, size)
    with atomic_path(out_path) as tmp:
        program = torch.onnx.export(
            wrapped, (example,), dynamo=True, opset_version=opset, input_names=["image"],
            output_names=["probabilities"], dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )  # fmt: skip
        program.save(str(tmp))
        _write_metadata(tmp, meta)
        check = _compare(tmp, wrapped, size)
        if check["max_abs_diff"] > TOLERANCE:
            raise CheckpointError(
                f"the exported graph differs from torch by {check['max_abs_diff']:.2e} (> {TOLERANCE})",
                out_path,
            )
    return {**check, "model": meta["model"], "input_size": size}


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, allow_nan=False)
    onnx.save(proto, str(path))


def _compare(path: Path, wrapped: Any, size: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = wrapped(x).numpy()
    return {"max_abs_diff": float(np.abs(got - want).max()), "checked_batch": 3}


class OnnxModel:
    """An exported model run by ONNX Runtime, with the part of the model contract the Predictor uses."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"not a readable ONNX model ({type(exc).__name__})", path) from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise CheckpointError("an ONNX model but not one exported by her2score (no metadata)", path)
        self.meta = json.loads(props[META_KEY])

    def eval(self) -> OnnxModel:
        return self

    def predict_step(self, batch: dict[str, Any]) -> Any:
        import torch

        image = batch["image"].detach().cpu().float().numpy()
        return torch.from_numpy(self.session.run(None, {"image": image})[0])

    def explain(self, batch: dict[str, Any]) -> None:
        return None

    def baselines(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {}
