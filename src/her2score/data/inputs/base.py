"""The input-kind interface and its registry (kinds register themselves, like models do)."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from her2score.data.lowres import Failure
from her2score.errors import ConfigError

#: Modules of this package whose import registers the built-in kinds.
_BUILTIN = ("lowres", "bag", "pair")
#: Third-party packages add kinds through this entry-point group (``name = "pkg.module"``).
ENTRY_POINT_GROUP = "her2score.input_kinds"


@dataclass
class Prepared:
    """Inputs of the rows that could be read; ``positions`` index the rows asked for."""

    kind: str
    items: Any
    positions: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, index: np.ndarray) -> Prepared:
        """The rows ``index`` only (items are a tensor, a dict of tensors, or a list)."""
        from dataclasses import replace

        items = self.items
        if isinstance(items, dict):
            sub: Any = {k: v[index] for k, v in items.items()}
        elif isinstance(items, list):
            sub = [items[int(i)] for i in index]
        else:
            sub = items[index]
        return replace(self, items=sub, positions=self.positions[index], failures=[])


class InputKind:
    """How one kind of model input is prepared, normalised, batched and augmented.

    Subclasses set ``name`` and implement :meth:`prepare` and :meth:`batch`; the constructor takes
    the kind's data configuration (keyword arguments, saved in the checkpoint by :meth:`config`).
    """

    name: ClassVar[str] = ""
    #: The kind the exported (inference) model reads; a paired kind predicts from one image alone.
    inference_kind: ClassVar[str | None] = None
    #: The stain the inference input carries (``ihc`` or ``he``), so ``predict`` can flag a wrong one.
    inference_stain: ClassVar[str] = "ihc"

    def config(self) -> dict[str, Any]:
        """The data configuration that rebuilds this kind (saved in the checkpoint)."""
        return {}

    def prepare(
        self,
        rows: list[dict[str, Any]],
        cache_dir: Any = None,
        workers: int = 0,
        quiet: bool = False,
    ) -> Prepared:
        """Read the inputs of ``rows`` (dicts with ``slide`` and optional ``mpp``, ``he``, ...).

        A row that cannot be read becomes a :class:`Failure`; it never stops the others.
        """
        raise NotImplementedError

    def statistics(self, prepared: Prepared, index: np.ndarray, pretrained: bool) -> dict[str, Any]:
        """Normalisation statistics from the training rows ``index`` (saved in the checkpoint)."""
        return {}

    def batch(
        self,
        prepared: Prepared,
        index: np.ndarray,
        stats: dict[str, Any],
        device: Any,
        augment: Any = None,
        generator: Any = None,
        inference: bool = False,
    ) -> dict[str, Any]:
        """Tensors for rows ``index`` of ``prepared`` on ``device``: augmented with ``augment``
        (training), normalised with ``stats``; ``inference`` leaves out what only training needs."""
        raise NotImplementedError

    def views(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The views whose predictions are averaged at test time (the batch alone by default)."""
        return [batch]

    def inference_config(self, stats: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``(kind, data config, statistics)`` of the input the saved (inference) model reads."""
        return self.inference_kind or self.name, self.config(), stats

    def model_options(self, prepared: Prepared) -> dict[str, Any]:
        """Model options the data decides (e.g. the feature size of tile-feature bags, ``in_dim``),
        passed to a model whose factory takes them unless the configuration sets them."""
        return {}

    def images(self, prepared: Prepared) -> Any:
        """The prepared uint8 images (N, 3, H, W) the model reads, or None for inputs without images."""
        return None

    def picture(self, prepared: Prepared, i: int) -> np.ndarray | None:
        """An RGB uint8 picture of item ``i`` for heatmaps, or None when the kind has none."""
        return None

    def picture_of_batch(self, batch: dict[str, Any]) -> Any:
        """The tensor in a batch that a spatial map (Grad-CAM) refers to, if any."""
        return None


_KINDS: dict[str, type[InputKind]] = {}


def register_input_kind(cls: type[InputKind]) -> type[InputKind]:
    """Class decorator adding an :class:`InputKind` subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _KINDS and _KINDS[cls.name] is not cls:
        raise ValueError(f"input kind {cls.name!r} is already registered")
    _KINDS[cls.name] = cls
    return cls


def _load() -> None:
    for module in _BUILTIN:
        importlib.import_module(f"her2score.data.inputs.{module}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value)


def list_input_kinds() -> list[str]:
    """Names of the registered input kinds."""
    _load()
    return sorted(_KINDS)


def get_input_kind(name: str) -> type[InputKind]:
    """The class of input kind ``name``; a ``ConfigError`` naming the known kinds otherwise."""
    _load()
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown input kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def create_input_kind(name: str, **config: Any) -> InputKind:
    """Build input kind ``name`` from the keys of ``config`` its constructor takes (others ignored:
    a run's configuration holds keys for every kind)."""
    cls = get_input_kind(name)
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in params and k != "self"})
