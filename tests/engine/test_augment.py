"""Batch augmentations: shapes and range kept, seeded, glass stays white, switches work."""

from __future__ import annotations

import torch

from her2score.data.augment import AugmentConfig, augment_batch, random_crop, small_affine, stain_jitter


def _batch() -> torch.Tensor:
    x = torch.ones(6, 3, 32, 32)
    x[:, 0, 8:24, 8:24] = 0.6  # a brownish square of "tissue" on white glass
    x[:, 1, 8:24, 8:24] = 0.4
    x[:, 2, 8:24, 8:24] = 0.25
    return x


def test_same_seed_same_batch_and_range() -> None:
    a = augment_batch(_batch(), torch.Generator().manual_seed(5), AugmentConfig())
    b = augment_batch(_batch(), torch.Generator().manual_seed(5), AugmentConfig())
    c = augment_batch(_batch(), torch.Generator().manual_seed(6), AugmentConfig())
    assert a.shape == (6, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0
    assert a.max() <= 1


def test_everything_off_is_identity() -> None:
    off = AugmentConfig(False, False, 0, 0, 0, 0, 0, 0, 0, 0)
    x = _batch()
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), off), x)


def test_affine_fills_white_and_stain_jitter_changes_only_tissue() -> None:
    cfg = AugmentConfig(affine_degrees=20, affine_scale=0.1, affine_translate=0.1)
    out = small_affine(_batch(), torch.Generator().manual_seed(0), cfg)
    assert torch.allclose(out[:, :, 0, 0], torch.ones(6, 3), atol=1e-4)  # corners: white, not black
    jit = stain_jitter(_batch(), torch.Generator().manual_seed(0), AugmentConfig(stain_jitter=0.2))
    assert torch.allclose(jit[:, :, 0, 0], torch.ones(6, 3), atol=1e-3)  # glass untouched
    assert (jit[:, :, 16, 16] - _batch()[:, :, 16, 16]).abs().max() > 0.01  # tissue colour varies


def test_random_crop_takes_tissue_windows_and_is_off_at_zero() -> None:
    x = torch.ones(4, 3, 64, 64)
    x[:, :, 40:, 40:] = 0.3  # tissue only in one 24-px corner of white glass
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, gen, AugmentConfig(crop=16), tries=64)
    assert out.shape == (4, 3, 16, 16)
    # with enough tries every window lands mostly on the tissue corner (9 % of the image)
    assert all(float((w.mean(0) < 0.86).float().mean()) >= 0.5 for w in out)
    assert random_crop(x, gen, AugmentConfig(crop=0)) is x
    assert random_crop(x, gen, AugmentConfig(crop=64)) is x


def test_crop_must_fit_the_input() -> None:
    import pytest

    from her2score.engine.config import config_from_dict
    from her2score.errors import ConfigError

    assert config_from_dict({"input_size": 384, "augment": {"crop": 192}}).augment.crop == 192
    with pytest.raises(ConfigError, match="crop"):
        config_from_dict({"input_size": 128, "augment": {"crop": 192}})
