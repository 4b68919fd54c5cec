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

from her2score.errors import CheckpointError, ConfigError

FORMAT = "her2score-model"
FORMAT_VERSION = 2
_REQUIRED = ("task", "classes", "model", "model_kwargs", "input_kind", "data", "stats")


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


def _upgrade(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata of format 1 (low-resolution models only) in the format-2 layout."""
    if int(meta.get("format_version", 1)) >= 2:
        return meta
    kwargs = dict(meta.get("model_kwargs", {}))
    kwargs.setdefault("norm", "layer")  # format-1 ConvNeXt checkpoints from before the norm choice
    return {
        **meta,
        "model_kwargs": kwargs,
        "data": {k: meta[k] for k in ("mpp", "input_size", "margin") if k in meta},
        "stats": {"mean": meta.get("mean"), "std": meta.get("std")},
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The her2score metadata of a checkpoint; ``CheckpointError`` when missing, corrupted or foreign."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError("is a folder; pass the model.safetensors file inside a run folder", path)
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
    if not isinstance(meta, dict):
        raise CheckpointError("her2score metadata is corrupted (not a mapping)", path)
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError("written by a newer her2score; upgrade to read it", path)
    meta = _upgrade(meta)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"her2score metadata lacks {', '.join(missing)}", path)
    return meta


def load_model(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model from its metadata alone and load its weights; ``(model, meta)``, in eval mode.

    Weights that are not finite are refused (``CheckpointError``).
    """
    import torch
    from safetensors.torch import load_file

    from her2score.models.registry import create_model

    meta = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"weights cannot be read, the file is corrupted ({type(exc).__name__})", path
        ) from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"the model holds non-finite weights ({', '.join(bad[:3])}); retrain it", path)
    try:
        model = create_model(meta["model"], len(meta["classes"]), **meta["model_kwargs"])
    except ConfigError as exc:
        raise CheckpointError(f"cannot rebuild {meta['model']}: {exc.cause}", path) from exc
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
