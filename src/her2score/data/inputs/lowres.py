"""``lowres``: one image per slide, the whole tissue read at a low resolution (IPD-Breast's input).

A slide is read at ``mpp`` µm/px, cropped to its tissue, fitted into an ``input_size`` square and
cached on disk (:mod:`her2score.data.lowres`); the cohort is then held in memory as one uint8 tensor,
so that an epoch costs only augmentation and the model step. The same kind reads single patches
(e.g. H&E patches for an H&E model) at their own µm/px.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2score.data.inputs.base import InputKind, Prepared, register_input_kind
from her2score.data.inputs.images import (
    dihedral_views,
    image_statistics,
    stack_images,
    to_model_input,
    to_picture,
)
from her2score.data.lowres import LowResParams, prepare_slides


@register_input_kind
class LowResImages(InputKind):
    """Whole tissue at ``mpp`` µm/px in an ``input_size`` square; keyed ``image`` in a batch."""

    name = "lowres"

    def __init__(self, mpp: float = 8.0, input_size: int = 224, margin: float = 0.02) -> None:
        self.params = LowResParams(mpp, input_size, margin)

    def config(self) -> dict[str, Any]:
        return {"mpp": self.params.mpp, "input_size": self.params.size, "margin": self.params.margin}

    def prepare(
        self, rows: list[dict[str, Any]], cache_dir: Any = None, workers: int = 0, quiet: bool = False
    ) -> Prepared:
        images, failures = prepare_slides(
            [r["slide"] for r in rows], self.params, cache_dir, [r.get("mpp") for r in rows],
            workers=workers, quiet=quiet,
        )  # fmt: skip
        tensor, positions = stack_images(images, self.params.size)
        return Prepared(self.name, tensor, positions, failures)

    def statistics(self, prepared: Prepared, index: np.ndarray, pretrained: bool) -> dict[str, Any]:
        return image_statistics(prepared.items, index, pretrained)

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
        return {"image": to_model_input(prepared.items[index], stats, device, augment, generator)}

    def views(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**batch, "image": v} for v in dihedral_views(batch["image"])]

    def images(self, prepared: Prepared) -> Any:
        return prepared.items

    def picture(self, prepared: Prepared, i: int) -> np.ndarray:
        return to_picture(prepared.items[i])

    def picture_of_batch(self, batch: dict[str, Any]) -> Any:
        return batch["image"]
