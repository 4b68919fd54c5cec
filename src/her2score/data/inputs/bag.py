"""``bag``: a bag of tile features with their coordinates per slide (multiple-instance learning).

A manifest row's ``slide`` names a feature file: safetensors holding ``features`` (N, D) float and
``coords`` (N, 2) tile positions in level-0 pixels (the tile-feature extractor writes these). Bags
are held in memory; a batch pads them to its largest bag with a ``mask`` of real tiles. Training
batches draw at most ``max_instances`` tiles per bag at random (a cheap augmentation that bounds
memory on large slides); prediction reads every tile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from her2score.data.inputs.base import Failure, InputKind, Prepared, register_input_kind
from her2score.errors import SlideError


def read_bag(path: str | Path) -> tuple[Any, Any]:
    """``(features (N, D) float32, coords (N, 2) float32)`` from a feature file; ``SlideError`` if bad."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SlideError("feature file not found", path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SlideError(f"not a readable safetensors feature file ({type(exc).__name__})", path) from exc
    feats = tensors.get("features")
    if feats is None or feats.ndim != 2 or feats.shape[0] == 0:
        raise SlideError("feature file holds no 'features' tensor of shape (tiles, dims)", path)
    if not torch.isfinite(feats).all():
        raise SlideError("feature file holds non-finite values", path)
    coords = tensors.get("coords")
    if coords is None or tuple(coords.shape) != (feats.shape[0], 2):
        coords = torch.zeros((feats.shape[0], 2))
    return feats.float(), coords.float()


@register_input_kind
class FeatureBags(InputKind):
    """Tile features (``features`` (B, N, D)), ``coords`` (B, N, 2) and ``mask`` (B, N) per batch."""

    name = "bag"

    def __init__(self, max_instances: int = 2048) -> None:
        self.max_instances = int(max_instances)

    def config(self) -> dict[str, Any]:
        return {"max_instances": self.max_instances}

    def prepare(
        self, rows: list[dict[str, Any]], cache_dir: Any = None, workers: int = 0, quiet: bool = False
    ) -> Prepared:
        from her2score.progress import progress_bar

        items, positions, failures, dims = [], [], [], set()
        with progress_bar(quiet) as bar:
            task = bar.add_task("Reading feature bags", total=len(rows))
            for i, row in enumerate(rows):
                try:
                    bag = read_bag(row["slide"])
                except SlideError as exc:
                    failures.append(Failure(str(row["slide"]), exc.cause))
                else:
                    items.append(bag)
                    positions.append(i)
                    dims.add(bag[0].shape[1])
                bar.advance(task)
        if len(dims) > 1:
            raise SlideError(
                f"feature files disagree on the feature size ({sorted(dims)}); one extractor per cohort"
            )
        return Prepared(self.name, items, np.array(positions, dtype=np.int64), failures)

    def model_options(self, prepared: Prepared) -> dict[str, Any]:
        return {"in_dim": int(prepared.items[0][0].shape[1])} if len(prepared) else {}

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
        import torch

        bags = [prepared.items[int(i)] for i in index]
        if augment is not None and generator is not None:
            drawn = []
            for feats, coords in bags:
                if len(feats) > self.max_instances:
                    keep = torch.randperm(len(feats), generator=generator)[: self.max_instances]
                    feats, coords = feats[keep], coords[keep]
                drawn.append((feats, coords))
            bags = drawn
        n = max(len(f) for f, _ in bags)
        d = bags[0][0].shape[1]
        features = torch.zeros((len(bags), n, d))
        coords = torch.zeros((len(bags), n, 2))
        mask = torch.zeros((len(bags), n), dtype=torch.bool)
        for b, (f, c) in enumerate(bags):
            features[b, : len(f)], coords[b, : len(f)], mask[b, : len(f)] = f, c, True
        return {"features": features.to(device), "coords": coords.to(device), "mask": mask.to(device)}
