"""``pair``: an H&E image and an IHC image of the same tissue, for models that learn from IHC but
predict from H&E alone (LGD-Net and its baselines).

A manifest row names the IHC image in ``slide`` (its label is the IHC score) and the H&E image in
``he``. Both are prepared like ``lowres`` inputs (read at ``mpp``, fitted into ``input_size``).
Training batches carry ``image`` (H&E) and ``teacher_image`` (IHC), augmented with the same flips,
rotations and affine draws so that they stay aligned; at inference a model reads ``image`` only,
through the ``lowres`` kind (:attr:`inference_kind`), with the H&E normalisation saved here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2score.data.inputs.base import Failure, Prepared, register_input_kind
from her2score.data.inputs.images import (
    dihedral_views,
    image_statistics,
    stack_images,
    to_model_input,
    to_picture,
)
from her2score.data.inputs.lowres import LowResImages
from her2score.data.lowres import prepare_slides


@register_input_kind
class PairedImages(LowResImages):
    """H&E (``image``) and IHC (``teacher_image``) of the same tissue (data configuration as ``lowres``)."""

    name = "pair"
    inference_kind = "lowres"
    inference_stain = "he"

    def prepare(
        self, rows: list[dict[str, Any]], cache_dir: Any = None, workers: int = 0, quiet: bool = False
    ) -> Prepared:
        missing = [i for i, r in enumerate(rows) if not r.get("he")]
        failures = [
            Failure(str(rows[i]["slide"]), "no H&E image ('he' column) for this IHC image") for i in missing
        ]
        usable = [i for i in range(len(rows)) if i not in set(missing)]
        mpps = [rows[i].get("mpp") for i in usable]
        he, he_fail = prepare_slides(
            [rows[i]["he"] for i in usable], self.params, cache_dir, mpps, workers, quiet, "Reading H&E"
        )
        ihc, ihc_fail = prepare_slides(
            [rows[i]["slide"] for i in usable], self.params, cache_dir, mpps, workers, quiet, "Reading IHC"
        )
        failures += he_fail + ihc_fail
        both = sorted(set(he) & set(ihc))
        he_t, _ = stack_images({usable[j]: he[j] for j in both}, self.params.size)
        ihc_t, positions = stack_images({usable[j]: ihc[j] for j in both}, self.params.size)
        return Prepared(self.name, {"image": he_t, "teacher_image": ihc_t}, positions, failures)

    def statistics(self, prepared: Prepared, index: np.ndarray, pretrained: bool) -> dict[str, Any]:
        stats = image_statistics(prepared.items["image"], index, pretrained)
        stats["teacher"] = image_statistics(prepared.items["teacher_image"], index, pretrained)
        return stats

    def inference_config(self, stats: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "lowres", self.config(), {k: v for k, v in stats.items() if k != "teacher"}

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

        twin = None
        if generator is not None:  # the IHC image gets the very same random draws as its H&E image
            twin = torch.Generator().set_state(generator.get_state())
        out = {"image": to_model_input(prepared.items["image"][index], stats, device, augment, generator)}
        if not inference:
            out["teacher_image"] = to_model_input(
                prepared.items["teacher_image"][index], stats["teacher"], device, augment, twin
            )
        return out

    def views(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if "teacher_image" not in batch:
            return [{**batch, "image": v} for v in dihedral_views(batch["image"])]
        pairs = zip(dihedral_views(batch["image"]), dihedral_views(batch["teacher_image"]), strict=True)
        return [{**batch, "image": h, "teacher_image": t} for h, t in pairs]

    def images(self, prepared: Prepared) -> Any:
        return prepared.items["image"]

    def picture(self, prepared: Prepared, i: int) -> np.ndarray:
        return to_picture(prepared.items["image"][i])

    def picture_of_batch(self, batch: dict[str, Any]) -> Any:
        return batch["image"]
