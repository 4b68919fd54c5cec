"""Test-time augmentation: the 8 flips/rotations of a slide give one answer, whatever its orientation."""

from __future__ import annotations

import numpy as np
import torch

from her2score.data.inputs import Prepared, create_input_kind
from her2score.data.inputs.images import dihedral_views
from her2score.engine.predictor import Predictor
from her2score.models.base import SlideModel

STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}


class Flat(SlideModel):
    """Orientation-sensitive on purpose: a linear layer over the flattened pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _predict(images: torch.Tensor, tta: bool) -> np.ndarray:
    kind = create_input_kind("lowres", input_size=16)  # the size only matters to prepare()
    prepared = Prepared("lowres", images, np.arange(len(images)))
    return Predictor(Flat(), kind, STATS, torch.device("cpu"), tta=tta).predict(prepared)


def test_dihedral_views_are_the_eight_distinct_symmetries() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = dihedral_views(x)
    assert len(views) == 8
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert len(dihedral_views(torch.zeros(1, 3, 4, 6))) == 2  # non-square: flips only


def test_tta_answer_does_not_depend_on_orientation() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    turned = torch.rot90(images, 1, dims=(-2, -1)).flip(-1)
    plain, plain_turned = _predict(images, False), _predict(turned, False)
    assert not np.allclose(plain, plain_turned, atol=1e-3)
    with_tta, with_tta_turned = _predict(images, True), _predict(turned, True)
    assert np.allclose(with_tta, with_tta_turned, atol=1e-5)
    assert with_tta.shape == (3, 3)
    assert abs(float(with_tta.sum(1).mean()) - 1) < 1e-5
