"""Saved her2score models read from inside the model layer (a frozen teacher or scorer).

The engine's checkpoint reader sits above the models; a model that is built around another, already
trained one (LGD-Net's frozen IHC teacher, virtual staining's IHC scorer) reads it here instead, with
the same safety: safetensors only, its own metadata, strict weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from her2score.errors import ConfigError


def read_checkpoint_metadata(path: str | Path, role: str = "scorer") -> dict[str, Any]:
    """The her2score metadata of a saved model; ``role`` names it in errors (scorer, teacher)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{role} checkpoint {path} not found (pass a model.safetensors trained on IHC)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})["her2score"])
    except Exception as exc:
        raise ConfigError(f"{role} {path} is not a her2score model ({type(exc).__name__}: {exc})") from exc


def load_lowres_classifier(path: str | Path, num_classes: int, role: str) -> tuple[Any, dict[str, Any]]:
    """A saved image classifier of the ``lowres`` family with ``num_classes`` classes: ``(model, meta)``.

    The model is rebuilt through the registry from its metadata and its weights loaded strictly.
    """
    from safetensors.torch import load_file

    from her2score.models.registry import create_model

    meta = read_checkpoint_metadata(path, role)
    if meta.get("input_kind") != "lowres" or len(meta.get("classes", ())) != num_classes:
        raise ConfigError(
            f"{role} {path} must be a lowres image model with {num_classes} classes "
            f"(it is {meta.get('model')} on {meta.get('input_kind')}, {len(meta.get('classes', ()))})"
        )
    model = create_model(meta["model"], num_classes, **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except Exception as exc:
        cause = type(exc).__name__
        raise ConfigError(f"{role} {path}: weights do not fit {meta['model']} ({cause})") from exc
    return model.eval(), meta
