"""Checkpoints: a self-describing ``model.safetensors`` for prediction, and a training state for resume.

``model.safetensors`` holds the *inference module* (for a distilled model, only the path it predicts
with) and, in its metadata, all that rebuilds it: the registry name and constructor arguments, the
input kind with its data configuration and normalisation statistics, task and classes. ``predict``
needs no other file and no model is special-cased. Nothing is ever unpickled: safetensors holds plain
tensors, and the resume state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from her2score.errors import CheckpointError

# the reader and loader sit in the model layer, where a model built around a saved one (a frozen
# teacher, a scorer) reads it too; re-exported here, the engine's checkpoint API
from her2score.models.saved import _REQUIRED, FORMAT, FORMAT_VERSION, load_model, read_metadata

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load_model",
    "load_state",
    "read_metadata",
    "save_model",
    "save_state",
]


def save_model(path: str | Path, model: Any, meta: dict[str, Any]) -> Path:
    """Write the model's weights and ``meta`` (JSON in the safetensors header) atomically.

    Refuses a model with non-finite weights: it would predict garbage with a straight face.
    """
    import torch
    from safetensors.torch import save_file

    from her2score import __version__
    from her2score.io import atomic_path

    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"not saved: non-finite weights in {', '.join(bad[:3])}", path)
    meta = {**meta, "her2score_version": __version__, "format_version": FORMAT_VERSION}
    with atomic_path(path) as tmp:
        save_file(
            state, str(tmp), metadata={"format": FORMAT, "her2score": json.dumps(meta, allow_nan=False)}
        )
    return Path(path)


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
