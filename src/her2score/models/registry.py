"""One registry of slide-level models, created by name (timm-like).

Each entry says which tasks it suits and what input it needs (``input_kind``: ``lowres`` for a
whole-slide image, later ``patches`` for bags of tile features, ``pair`` for H&E + IHC), so that one
engine serves every model: it asks the spec what data to build, then calls ``create_model``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from her2score.errors import ConfigError

#: Modules whose import registers models; imported lazily so that ``import her2score`` stays light.
MODEL_MODULES = ("her2score.models.lowres",)

INPUT_KINDS = ("lowres", "patches", "pair")


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a model before building it."""

    name: str
    factory: Callable[..., Any]
    tasks: tuple[str, ...]
    input_kind: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    tasks: tuple[str, ...] | list[str] = ("her2-3way", "her2-4way", "er", "pr"),
    input_kind: str = "lowres",
    description: str = "",
    **defaults: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a factory ``f(num_classes, **kwargs) -> nn.Module`` to the registry."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model {name!r} is already registered")
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        _REGISTRY[name] = ModelSpec(
            name=name,
            factory=factory,
            tasks=tuple(tasks),
            input_kind=input_kind,
            description=doc if isinstance(doc, str) else (doc[0] if doc else ""),
            defaults=dict(defaults),
        )
        return factory

    return wrap


def _load_builtin() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def list_models() -> list[ModelSpec]:
    """All registered models, sorted by name."""
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; a clear ``ConfigError`` naming the known models otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ConfigError(f"unknown model {name!r}; registered models: {known}") from None


def create_model(name: str, num_classes: int, **kwargs: Any) -> Any:
    """Build the model ``name`` with ``num_classes`` outputs; ``kwargs`` override the entry's defaults."""
    spec = get_model_spec(name)
    options = {**spec.defaults, **kwargs}
    return spec.factory(num_classes=num_classes, **options)
