"""Stain vectors per image and H&E detection (``her2score.stain.detect``: quantifier and predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from her2score.errors import ConfigError
from her2score.stain import HDAB
from her2score.stain.deconvolution import DAB, EOSIN, HEMATOXYLIN, od_to_rgb
from her2score.stain.detect import choose_stain_vectors, looks_like_he


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def draw_sheet(membrane_od: float, eosin: bool = False, size_px: int = 256) -> np.ndarray:
    """Round cells 18 µm apart at 0.5 µm/px: hematoxylin nuclei, DAB membranes, or eosin cytoplasm (H&E)."""
    rng = np.random.default_rng(0)
    yy, xx = (np.mgrid[:size_px, :size_px] + 0.5) * 0.5
    r = np.hypot((yy % 18.0) - 9.0, (xx % 18.0) - 9.0)
    hema = np.where(r <= 4.5, 0.35, 0.04).astype(np.float32)
    dab = np.where(np.abs(r - 7.5) <= 0.7, membrane_od, 0.0).astype(np.float32)
    other = np.where(r < 8.5, 0.5, 0.25).astype(np.float32) if eosin else np.zeros_like(hema)
    od = hema[..., None] * _unit(HEMATOXYLIN) + dab[..., None] * _unit(DAB) + other[..., None] * _unit(EOSIN)
    od += rng.normal(0, 0.01, od.shape).astype(np.float32)
    return od_to_rgb(np.clip(od, 0, None))


@pytest.mark.parametrize(("eosin", "expected"), [(True, True), (False, False)])
def test_looks_like_he_tells_eosin_from_dab(eosin: bool, expected: bool) -> None:
    rgb = draw_sheet(0.0 if eosin else 0.6, eosin=eosin)
    tissue = np.ones(rgb.shape[:2], dtype=bool)
    assert looks_like_he(rgb, tissue) is expected


def test_stain_vectors_default_estimated_or_refused() -> None:
    rgb = draw_sheet(0.6)
    assert choose_stain_vectors(rgb, "default") == (HDAB, "default")
    matrix, source = choose_stain_vectors(rgb, "auto")
    assert source.split()[0] in ("estimated", "default")
    assert matrix.names == ("hematoxylin", "dab")
    with pytest.raises(ConfigError, match="auto"):
        choose_stain_vectors(rgb, "macenko")


def test_a_stain_estimate_far_from_the_references_falls_back_and_says_why() -> None:
    from her2score.stain.deconvolution import StainMatrix
    from her2score.stain.detect import check_stain_estimate

    rgb = draw_sheet(0.6)
    blue_ink = StainMatrix(("hematoxylin", "other"), ((0.65, 0.70, 0.29), (0.9, 0.4, 0.1)))
    why = check_stain_estimate(rgb, blue_ink)
    assert why.startswith("DAB")
    matrix, source = choose_stain_vectors(rgb, "auto", estimate=blue_ink)
    assert matrix == HDAB
    assert source == f"default ({why})"
    assert check_stain_estimate(rgb, None) == "too few stained pixels"


def test_an_unstained_image_keeps_the_reference_vectors() -> None:
    blank = np.full((128, 128, 3), 240, np.uint8)
    matrix, source = choose_stain_vectors(blank, "auto")
    assert matrix == HDAB
    assert source.startswith("default (")


def test_a_dab_free_ihc_with_a_tinted_background_is_not_taken_for_he() -> None:
    """A Ki-67 / ER tile without a positive nucleus (or a HER2-0) has one stain: its Macenko "second
    stain" is the background's tint, often green-dominant and 18-40° from hematoxylin, but no eosin
    (before the eosin floor, 9 of these 54 were refused as H&E)."""
    yy, xx = (np.mgrid[:256, :256] + 0.5) * 0.5
    r = np.hypot((yy % 14.0) - 7.0, (xx % 14.0) - 7.0)
    nuclei = np.where(r <= 4.5, 0.4, 0.0)[..., None] * _unit(HEMATOXYLIN)
    refused, without_floor = [], 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for tint in ((0.6, 0.75, 0.5), (0.55, 0.75, 0.45), (0.45, 0.8, 0.55)):
            for background in (0.1, 0.15, 0.2):
                od = nuclei + background * _unit(tint) + rng.normal(0, 0.01, nuclei.shape)
                rgb = od_to_rgb(np.clip(od, 0, None).astype(np.float32))
                tissue = np.ones(rgb.shape[:2], dtype=bool)
                if looks_like_he(rgb, tissue):
                    refused.append((seed, tint, background))
                without_floor += looks_like_he(rgb, tissue, min_eosin_share=0.0)
    assert refused == []
    assert without_floor > 0  # the eosin floor is what lets them pass


REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


@pytest.mark.skipif(not REAL.is_dir(), reason="real test images absent")
def test_real_ihc_passes_and_real_he_is_refused() -> None:
    from PIL import Image

    from her2score.quantify.pipeline import tissue_mask_for

    def he(path: Path) -> bool:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        return looks_like_he(rgb, tissue_mask_for(rgb, 0.5))

    ihc = sorted(REAL.glob("bci-her2-pairs/IHC/*.png")) + sorted(REAL.glob("mist-her2-pairs/IHC/*.jpg"))
    assert len(ihc) == 21
    assert not [p.name for p in ihc if he(p)]
    clear_he = sorted(REAL.glob("mist-her2-pairs/HE/*.jpg")) + [
        REAL / "bci-her2-pairs" / "HE" / name for name in ("00052_test_3+.png", "00361_test_2+.png")
    ]
    assert [p.name for p in clear_he if not he(p)] == []


@pytest.mark.skipif(not REAL.is_dir(), reason="real test images absent")
def test_pale_real_he_is_not_flagged_for_an_he_model() -> None:
    """Where H&E is expected (``predict`` with an H&E model), the eosin floor is not applied: the pale
    real BCI H&E 00001, 00002 and 00011 (eosin in 1-2 % of the tissue) were flagged "does not look like
    H&E" once the floor came in; an IHC is still flagged for an H&E model."""
    from PIL import Image

    from her2score.engine.predict import stain_status

    def status(path: Path, expected: str) -> str:
        return stain_status(np.asarray(Image.open(path).convert("RGB")), expected=expected)

    names = ("00001_train_3+", "00002_train_3+", "00011_test_3+")
    pale = [REAL / "bci-her2-pairs" / "HE" / f"{name}.png" for name in names]
    assert [p.name for p in pale if status(p, "he") != "ok"] == []
    partner = REAL / "bci-her2-pairs" / "IHC" / f"{names[0]}.png"  # its IHC is still flagged
    assert status(partner, "he").startswith("warning: does not look like H&E")
