"""One registry of slide-level models, created by name (as timm does).

Each entry (:class:`ModelSpec`) says which tasks the model suits, which input kind it reads and with
which data configuration (µm/px, input size, ...), what it outputs (class probabilities, and maps:
Grad-CAM, attention) and whether it can be exported. The engine asks the spec what data to build,
then calls :func:`create_model`; no part of the engine knows a model by name.

Every module of the ``her2score.models`` package registers its models when imported (found by
listing the package, not a closed list; the torch classes live in ``models.nets`` and are imported
by the factories, so listing the registry does not import torch), and other packages add theirs
through the entry-point group ``her2score.models``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from her2score.errors import ConfigError

ENTRY_POINT_GROUP = "her2score.models"
ALL_TASKS = ("her2-3way", "her2-4way", "er", "pr")
_NOT_MODEL_MODULES = {"registry", "base"}


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a model before building it."""

    name: str
    factory: Callable[..., Any]
    tasks: tuple[str, ...]
    input_kind: str
    description: str
    data: dict[str, Any] = field(default_factory=dict)  # default data configuration of its input kind
    maps: tuple[str, ...] = ()  # spatial outputs besides probabilities: "gradcam", "attention"
    exportable: bool = True  # whether its inference module can be exported (ONNX)
    defaults: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The factory's keyword options and their defaults (``num_classes`` left out)."""
        params = inspect.signature(self.factory).parameters
        out = {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in params.items()
            if k != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        return {**out, **self.defaults}


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    tasks: tuple[str, ...] | list[str] = ALL_TASKS,
    input_kind: str = "lowres",
    description: str = "",
    data: dict[str, Any] | None = None,
    maps: tuple[str, ...] = (),
    exportable: bool = True,
    **defaults: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a factory ``f(num_classes, **options) -> SlideModel`` to the registry."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model {name!r} is already registered")
        lines = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(
            name=name,
            factory=factory,
            tasks=tuple(tasks),
            input_kind=input_kind,
            description=description or (lines[0] if lines else ""),
            data=dict(data or {}),
            maps=tuple(maps),
            exportable=exportable,
            defaults=dict(defaults),
        )
        return factory

    return wrap


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import her2score.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg and info.name not in _NOT_MODEL_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"her2score.models.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value)
    _loaded = True


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


def check_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the factory's signature: an unknown key is a ``ConfigError``
    that lists the options the model takes."""
    known = get_model_spec(name).options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"model {name} has no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(sorted(known)) or 'none'})"
        )
    return dict(options)


def create_model(name: str, num_classes: int, **kwargs: Any) -> Any:
    """Build model ``name`` with ``num_classes`` outputs; ``kwargs`` override the entry's defaults.

    The model remembers its registry name and the full set of arguments it was built with, so the
    engine can save and rebuild it without knowing it.
    """
    spec = get_model_spec(name)
    options = {**spec.defaults, **check_model_options(name, kwargs)}
    model = spec.factory(num_classes=num_classes, **options)
    model.registry_name = name
    model.init_kwargs = {**spec.options(), **options}
    return model
