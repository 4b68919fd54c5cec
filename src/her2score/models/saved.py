"""Saved her2score models: the checkpoint metadata reader and the model loader.

They live in the model layer so that a model built around another, already trained one (LGD-Net's
frozen IHC teacher, virtual staining's IHC scorer) reads it with the same checks as ``predict``; the
engine re-exports them (:mod:`her2score.engine.checkpoint`). Safetensors only, nothing unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from her2score.errors import CheckpointError, ConfigError

FORMAT = "her2score-model"
FORMAT_VERSION = 2
_REQUIRED = ("task", "classes", "model", "model_kwargs", "input_kind", "data", "stats")


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
    meta = read_metadata(path)
    return load_weights(path, meta).to(device).eval(), meta


def load_weights(path: str | Path, meta: dict[str, Any]) -> Any:
    """The model ``meta`` (from :func:`read_metadata`) describes, rebuilt with the weights of ``path``."""
    import torch
    from safetensors.torch import load_file

    from her2score.models.registry import create_model

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
    return model


def load_lowres_classifier(path: str | Path, num_classes: int, role: str) -> tuple[Any, dict[str, Any]]:
    """A saved image classifier of the ``lowres`` family with ``num_classes`` classes: ``(model, meta)``,
    in eval mode; ``role`` names it in errors (scorer, teacher)."""
    try:
        meta = read_metadata(path)
    except CheckpointError as exc:
        raise ConfigError(f"{role} {path}: {exc.cause}") from exc
    if meta.get("input_kind") != "lowres" or len(meta.get("classes", ())) != num_classes:
        raise ConfigError(
            f"{role} {path} must be a lowres image model with {num_classes} classes "
            f"(it is {meta.get('model')} on {meta.get('input_kind')}, {len(meta.get('classes', ()))})"
        )
    try:
        model = load_weights(path, meta)
    except CheckpointError as exc:
        raise ConfigError(f"{role} {path}: {exc.cause}") from exc
    return model.eval(), meta
