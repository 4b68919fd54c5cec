"""Test-time augmentation: the 8 flips/rotations of a slide give one answer, whatever its orientation."""

from __future__ import annotations

import torch

from her2score.engine.evaluate import dihedral_views, predict_probs

META = {"mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b", "c"]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))  # orientation-sensitive


def test_dihedral_views_are_the_eight_distinct_symmetries() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = dihedral_views(x)
    assert len(views) == 8
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert len(dihedral_views(torch.zeros(1, 3, 4, 6))) == 2  # non-square: flips only


def test_tta_answer_does_not_depend_on_orientation() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    turned = torch.rot90(images, 1, dims=(-2, -1)).flip(-1)
    model = _model()
    plain = predict_probs(model, images, META, torch.device("cpu"), tta=False)
    plain_turned = predict_probs(model, turned, META, torch.device("cpu"), tta=False)
    assert not torch.allclose(torch.as_tensor(plain), torch.as_tensor(plain_turned), atol=1e-3)
    with_tta = predict_probs(model, images, {**META, "tta": True}, torch.device("cpu"))
    with_tta_turned = predict_probs(model, turned, {**META, "tta": True}, torch.device("cpu"))
    assert torch.allclose(torch.as_tensor(with_tta), torch.as_tensor(with_tta_turned), atol=1e-5)
    assert with_tta.shape == (3, 3)
    assert abs(float(with_tta.sum(1).mean()) - 1) < 1e-5
