"""Checkpoints: a self-describing ``model.safetensors`` for prediction, and a training state for resume.

``model.safetensors`` carries, in its metadata, everything needed to rebuild the model and its input
(task, classes, model name, backbone, input kind and size, µm/px, normalisation, her2score version),
so that ``predict`` needs no other file. Nothing is ever unpickled: safetensors holds plain tensors,
and the resume state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from her2score.errors import CheckpointError

FORMAT = "her2score-model"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_REQUIRED = ("task", "classes", "model", "input_kind", "input_size", "mpp", "mean", "std")


def save_model(path: str | Path, model: Any, meta: dict[str, Any]) -> Path:
    """Write the model's weights and ``meta`` (JSON in the safetensors header) atomically."""
    from safetensors.torch import save_file

    from her2score import __version__
    from her2score.io import atomic_path

    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    meta = {**meta, "her2score_version": __version__, "format_version": FORMAT_VERSION}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "her2score": json.dumps(meta)})
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The her2score metadata of a checkpoint; ``CheckpointError`` when corrupted or foreign."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(
            f"not a readable safetensors file, corrupted or of another format ({type(exc).__name__})", path
        ) from exc
    if header.get("format") != FORMAT or "her2score" not in header:
        raise CheckpointError(
            "a safetensors file but not a her2score model (no her2score metadata); "
            "pass the model.safetensors written by 'her2score train'",
            path,
        )
    try:
        meta = json.loads(header["her2score"])
    except json.JSONDecodeError as exc:
        raise CheckpointError("her2score metadata is corrupted (not JSON)", path) from exc
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"her2score metadata lacks {', '.join(missing)}", path)
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError("written by a newer her2score; upgrade to read it", path)
    return meta


def load_model(path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model from its metadata alone, load its weights; ``(model, meta)``, in eval mode."""
    from safetensors.torch import load_file

    from her2score.models.registry import create_model

    meta = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"weights cannot be read, the file is corrupted ({type(exc).__name__})", path
        ) from exc
    kwargs = dict(meta.get("model_kwargs", {}))
    if meta["model"].startswith("lowres-"):
        kwargs.setdefault("norm", "layer")  # checkpoints from before the norm choice were LayerNorm
    model = create_model(meta["model"], len(meta["classes"]), **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights do not fit {meta['model']} ({first})", path) from exc
    return model.to(device).eval(), meta


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Training state for resume (tensors, numbers, strings only), written atomically."""
    import torch

    from her2score.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` (no arbitrary unpickling)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"training state cannot be read ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError("not a her2score training state", path)
    return state
